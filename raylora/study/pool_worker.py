"""The trial pool's worker side: the loop each Ray Train worker of a runner runs, and its session.

Rank 0 asks the :class:`~raylora.study.pool.TrialPool` actor for the next trial and broadcasts it to the
other ranks; every rank then runs the training recipe with a :class:`PoolSession`, which writes adapter
checkpoints (:class:`~raylora.study.checkpoints.Checkpoints`) and sends reports back to the pool.
"""

from __future__ import annotations

from pathlib import Path

from ..layout import DONE, REPORTS
from ..record.states import DISCARDED, EXIT, classify, peer_lost
from .checkpoints import Checkpoints


def serve_trials(config: dict) -> None:
    """Ray Train's entry point for a runner: train the trials the pool hands out until it says exit."""
    import ray
    import ray.train

    pool, runner = config["pool"], config["runner"]
    rank = ray.train.get_context().get_world_rank()
    pool.checked_in.remote(runner, rank)  # the user hears "starting workers n/m", then "importing"

    from ..train import quantization

    if not config["may_quantize"]:
        quantization.keep_out()
    import peft  # noqa: F401  (and transformers: what the importing phase is; the recipe needs both)

    from ..spec import Spec
    from ..train.recipe import train

    checkpoints = Checkpoints(**config["checkpoints"])
    ray.get(pool.enlist.remote(runner, rank, ray.get_runtime_context().current_actor))  # for the watchdog
    fresh = True
    while True:
        job = _next_job(pool, runner, fresh, rank)
        fresh = False
        if job == EXIT:
            return
        if job is None:
            continue
        slot = job["trial_id"]
        session = PoolSession(pool, slot, checkpoints.for_trial(slot))
        try:
            train(Spec.from_dict(job["spec"]), session)
        except Exception as e:
            if not peer_lost(e):  # a dead peer's trial is not failed: the restarted group resumes it
                ray.get(pool.failed.remote(runner, slot, *classify(e)))
            raise  # the other workers may be waiting in a collective: Ray Train restarts the group
        finally:
            session.close()
        if rank == 0:
            ray.get(pool.finished.remote(runner, slot))
        _release_memory()


def _next_job(pool, runner: int, fresh: bool, rank: int):
    import ray
    import torch

    job = ray.get(pool.next_job.remote(runner, fresh, 5.0)) if rank == 0 else None
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        box = [job]
        device = torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else None
        torch.distributed.broadcast_object_list(box, src=0, device=device)
        job = box[0]
    return job


def _release_memory() -> None:
    """Free a finished trial's memory and restart the peak-memory count, so the next trial's
    ``peak_mem_mb`` is its own and not the worker's largest so far."""
    import gc

    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    try:  # Linux: resets the process's peak resident memory (VmHWM, and so ru_maxrss)
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass  # elsewhere a CPU trial's peak includes the earlier trials on this worker


class PoolSession:
    """The training recipe's :class:`~raylora.train.session.Session` on a runner's worker: rank 0 writes
    adapter checkpoints to :class:`Checkpoints` and sends the reports to the pool; every worker gets rank
    0's stop answer."""

    def __init__(self, pool, trial_id: str, checkpoints: Checkpoints):
        import ray
        import ray.train

        context = ray.train.get_context()
        self.node = ray.util.get_node_ip_address()
        self.rank, self.world_size = context.get_world_rank(), context.get_world_size()
        self.local_rank = context.get_local_rank()
        self.pool, self.trial_id, self.checkpoints = pool, trial_id, checkpoints
        self._asked = None
        self._resume: Path | None = None
        self._told = float("-inf")
        self._first: tuple[int, float] | None = None
        self._discarded: list[str] = []  # checkpoints that failed their manifest, told in the next report
        self._phase: tuple[str, float] = ("", float("-inf"))

    def phase(self, phase, done: int | None = None, total: int | None = None) -> None:
        """Rank 0 tells the pool a phase began, and how far a counting one is at most every second."""
        import time

        from ..train.session import phase_text

        if self.rank != 0:
            return
        now = time.monotonic()
        if phase == self._phase[0] and now - self._phase[1] < 1.0 and done != total:
            return
        self._phase = (phase, now)
        self.pool.phase.remote(self.trial_id, phase_text(phase, done, total))

    def stop_requested(self, distributed: bool, device) -> bool:
        """Whether the scheduler stopped this trial, asked once per step and never waited for."""
        import ray
        import torch

        stop = False
        if self.rank == 0:
            # The answer to the previous step's question: one step late.
            stop = self._asked is not None and ray.get(self._asked)
            self._asked = self.pool.is_stopped.remote(self.trial_id)
        if distributed:
            flag = torch.tensor([float(stop)], device=device)
            torch.distributed.broadcast(flag, src=0)
            stop = bool(flag.item())
        return stop

    def progress(self, step: int, max_steps: int, running: dict) -> None:
        """Rank 0 tells the pool where the trial is, at most every 2 s (fire and forget)."""
        import time

        now = time.monotonic()
        if self.rank != 0:
            return
        if self._first is None:
            self._first = (step, now)
        if now - self._told < 2.0 and step < max_steps:
            return
        self._told = now
        first_step, first_time = self._first
        rate = (step - first_step) / (now - first_time) if now > first_time else None
        values = {"step": step, "max_steps": max_steps, "steps_per_s": rate, **running}
        self.pool.progress.remote(self.trial_id, values)

    def latest_checkpoint(self) -> Path | None:
        """The newest checkpoint that matches its manifest (None: start afresh); rank 0 deletes newer ones
        that do not, and names them in its next report."""
        self._resume, passed_over = self.checkpoints.trusted(discard=self.rank == 0)
        if self.rank == 0:
            if passed_over:
                import sys

                self._discarded = passed_over
                print(f"{self.trial_id}: discarded checkpoint(s) {', '.join(passed_over)}", file=sys.stderr)
            if self._resume is not None:
                self._replay()
        return self._resume

    # Every report rank 0 sent, one JSON line each, beside the trial's checkpoints. A driver that stopped
    # listening (Ctrl-C, a killed driver) missed some; a resumed trial sends them all again first, so the
    # study's record and MLflow curves hold every evaluation the workers ran (MLflow keeps one copy of a
    # metric sent twice with the same step, time and value).

    def _log_report(self, metrics: dict) -> None:
        import json

        line = json.dumps(metrics, default=str) + "\n"
        path = f"{self.checkpoints.folder}/{REPORTS}"
        if self.checkpoints.filesystem is None:
            with open(path, "a") as f:
                f.write(line)
            return
        earlier = self.checkpoints._read(path) or ""
        with self.checkpoints.fs.open_output_stream(path) as f:  # object stores do not append
            f.write((earlier + line).encode())

    def _replay(self) -> None:
        import json

        import ray

        try:  # up to the checkpoint resumed from: newer reports belong to checkpoints passed over
            upto = json.loads((self._resume / DONE).read_text())["step"]
        except (OSError, ValueError, KeyError):
            upto = None
        text = self.checkpoints._read(f"{self.checkpoints.folder}/{REPORTS}") or ""
        for line in text.splitlines():
            try:
                metrics = json.loads(line)
            except ValueError:
                continue  # the last line of a worker killed mid-write
            if upto is not None and metrics.get("step", 0) > upto:
                continue
            ray.get(self.pool.report.remote(self.trial_id, {**metrics, "replayed": True}))

    def report(self, metrics: dict, write_checkpoint=None) -> None:
        import tempfile
        import time

        import ray

        if self.rank != 0:
            return
        out = {**metrics, "reported_at": time.time()}
        if self._discarded:
            out[DISCARDED], self._discarded = "; ".join(self._discarded), []
        if write_checkpoint is not None:
            with tempfile.TemporaryDirectory(prefix="raylora-ckpt-") as tmp:
                write_checkpoint(Path(tmp))
                out["checkpoint_path"] = self.checkpoints.save(Path(tmp), int(metrics["step"]), metrics)
        self._log_report(out)
        ray.get(self.pool.report.remote(self.trial_id, out))

    def finish(self, write_final) -> None:
        """The last reported checkpoint already holds the final adapter."""

    def close(self) -> None:
        import shutil

        if self._resume is not None and self.checkpoints.filesystem is not None:
            shutil.rmtree(self._resume, ignore_errors=True)
