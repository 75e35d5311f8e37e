"""The trial pool: long-lived Ray Train worker groups that run a study's trials one after another.

A fresh ``TorchTrainer`` per trial starts a Train controller, its helper actors and every worker process
again, and each worker imports torch, transformers and PEFT again: on a small node that is most of a short
trial's time, and on a GPU cluster it adds a CUDA context and a process group per trial. Here each of the
study's concurrent trial slots is one ``TorchTrainer`` run whose workers (DDP across nodes, placed by Ray
Train as before) take trial after trial from :class:`TrialPool`:

    Tune trial driver ──submit/poll──▶ TrialPool actor ◀──next_job/report/finished── rank 0 of a runner

* A trial's adapter checkpoints are written by rank 0 to ``<study>/runs/<slot>/checkpoint_s<step>``
  (:class:`Checkpoints`), keeping the latest and the best; a trial restarted on any runner resumes there.
* A worker that dies, or a trial that raises, ends the runner's worker group; Ray Train starts it again and
  the pool hands the interrupted trial back (up to ``resources.max_failures`` times) or moves on. A trial
  that raised is reported FAILED (INFEASIBLE for out of memory) first, so one bad trial never takes the
  study down and never leaves a worker waiting in a collective.
* The scheduler's early stops reach the workers through :meth:`TrialPool.is_stopped`, asked once per step.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass, field, replace
from pathlib import Path

EXIT = "exit"
CHECKPOINT_PREFIX = "checkpoint_s"
REPORT_FILE = "report.json"


@dataclass
class _Job:
    spec: dict
    reports: list[dict] = field(default_factory=list)
    state: str = "queued"  # queued | running | done | failed
    error: tuple[str, str] | None = None
    attempts: int = 0


@dataclass
class _Runner:
    current: str | None = None
    alive: bool = True
    served: int = 0


class TrialPool:
    """The study's trial queue and its runners (run as a threaded Ray actor).

    ``runner`` holds what every runner's ``TorchTrainer`` needs: ``workers``, ``cpus_per_worker``,
    ``gpus_per_worker``, ``placement_strategy``, ``max_failures`` (restarts per trial), ``pools_dir`` and
    ``filesystem`` (where Ray Train keeps the runners' own state) and the ``checkpoints`` settings
    (:class:`Checkpoints`' arguments), plus ``may_quantize``.
    """

    def __init__(self, runner: dict, max_runners: int):
        self.settings, self.max_runners = runner, max_runners
        self.cond = threading.Condition()
        self.queue: deque[str] = deque()
        self.jobs: dict[str, _Job] = {}
        self.runners: dict[int, _Runner] = {}
        self.stopped: set[str] = set()
        self.closing = False
        self.broken: tuple[str, str] | None = None  # why no worker group can start; trials fail with it

    # -- the Tune side --------------------------------------------------------------------------------

    def submit(self, slot: str, spec: dict) -> None:
        """Queue trial ``slot`` (a resumed trial is queued again and resumes from its checkpoint)."""
        with self.cond:
            self.jobs[slot] = job = _Job(spec)
            self.stopped.discard(slot)
            if self.broken:
                job.state, job.error = "failed", self.broken
                return
            self.queue.append(slot)
            self._grow(len(self.queue))
            self.cond.notify_all()

    def warm(self) -> None:
        """A trial is about to be submitted: have a runner ready (its workers start meanwhile)."""
        with self.cond:
            self._grow(len(self.queue) + 1)

    def poll(self, slot: str, cursor: int, timeout: float) -> tuple[list[dict], str, tuple | None]:
        """``(reports after cursor, state, error)``, waiting up to ``timeout`` s for something new."""
        with self.cond:
            job = self.jobs[slot]
            self.cond.wait_for(
                lambda: len(job.reports) > cursor or job.state in ("done", "failed") or slot in self.stopped,
                timeout=timeout,
            )
            state = "stopped" if slot in self.stopped else job.state
            return job.reports[cursor:], state, job.error

    def stop(self, slot: str) -> None:
        """The scheduler stopped ``slot``: its workers end it at their next step and take the next trial."""
        with self.cond:
            self.stopped.add(slot)
            self.cond.notify_all()

    def is_stopped(self, slot: str) -> bool:
        return slot in self.stopped

    def close(self) -> None:
        """Let every runner's workers exit (their Train runs then end on their own)."""
        with self.cond:
            self.closing = True
            self.cond.notify_all()

    # -- the workers' side (rank 0 of each runner) ---------------------------------------------------

    def next_job(self, runner: int, fresh: bool, timeout: float) -> dict | str | None:
        """The runner's next trial (``{"trial_id", "spec"}``), None for nothing yet, or ``EXIT``.

        ``fresh``: the first call of a newly started worker group. If the runner was in the middle of a
        trial, its workers died: the trial is handed back to resume, or failed once out of restarts.
        """
        with self.cond:
            state = self.runners[runner]
            if fresh and state.current is not None:
                slot, job = state.current, self.jobs[state.current]
                job.attempts += 1
                if job.attempts <= self.settings["max_failures"] and slot not in self.stopped:
                    return {"trial_id": slot, "spec": job.spec}
                reason = f"a worker died and the trial was restarted {job.attempts - 1} time(s) already"
                self._end(state, job, "failed", ("FAILED", f"WorkerDied: {reason}"))
            self.cond.wait_for(lambda: self.queue or self.closing, timeout=timeout)
            if self.closing:
                return EXIT
            while self.queue:
                slot = self.queue.popleft()
                job = self.jobs[slot]
                if slot in self.stopped or job.state != "queued":
                    continue
                job.state, state.current = "running", slot
                state.served += 1
                return {"trial_id": slot, "spec": job.spec}
            return None

    def report(self, slot: str, metrics: dict) -> None:
        with self.cond:
            if slot not in self.stopped:
                self.jobs[slot].reports.append(metrics)
                self.cond.notify_all()

    def finished(self, runner: int, slot: str) -> None:
        with self.cond:
            self._end(self.runners[runner], self.jobs[slot], "done", None)

    def failed(self, runner: int, slot: str, status: str, message: str) -> None:
        """Trial ``slot`` raised on some worker; the first report wins (its group restarts next)."""
        with self.cond:
            state = self.runners[runner]
            if state.current == slot:
                self._end(state, self.jobs[slot], "failed", (status, message))

    # -- runners ---------------------------------------------------------------------------------------

    def _end(self, runner: _Runner, job: _Job, state: str, error: tuple | None) -> None:
        job.state, job.error = state, error
        if runner.current is not None and self.jobs.get(runner.current) is job:
            runner.current = None
        self.cond.notify_all()

    def _grow(self, wanted: int) -> None:
        """Start a runner if fewer than ``wanted`` are free and the study allows one more."""
        live = [r for r in self.runners.values() if r.alive]
        if sum(r.current is None for r in live) < wanted and len(live) < self.max_runners:
            self._start_runner()

    def _start_runner(self) -> None:
        import ray

        rid = len(self.runners)
        self.runners[rid] = _Runner()
        handle = ray.get_runtime_context().current_actor
        threading.Thread(target=self._run, args=(rid, handle), daemon=True, name=f"runner-{rid}").start()

    def _run(self, rid: int, handle) -> None:
        from .trial import classify

        state = self.runners[rid]
        try:
            self._trainer(rid, handle).fit()
            error = None
        except Exception as e:  # the Train run ran out of restarts, or could not start
            error = classify(e)
        with self.cond:
            state.alive = False
            slot, state.current = state.current, None
            if slot is not None:
                job = self.jobs[slot]
                job.attempts += 1
                if error and job.attempts <= self.settings["max_failures"] and slot not in self.stopped:
                    job.state = "queued"  # its next runner resumes it from its checkpoint
                    self.queue.appendleft(slot)
                else:
                    self._end(state, job, "failed", error or ("FAILED", "its worker group ended"))
            if not state.served and not self.closing:
                # This group never reached a trial: another would not either. Fail what waits, loudly.
                self.broken = error or ("FAILED", "the worker group ended before its first trial")
                while self.queue:
                    self._end(state, self.jobs[self.queue.popleft()], "failed", self.broken)
            elif self.queue and not self.closing:
                self._start_runner()

    def _trainer(self, rid: int, handle):
        import ray.train
        from ray.train.torch import TorchConfig, TorchTrainer

        s = self.settings
        use_gpu = s["gpus_per_worker"] > 0
        per_worker = {"CPU": s["cpus_per_worker"], **({"GPU": s["gpus_per_worker"]} if use_gpu else {})}
        return TorchTrainer(
            serve_trials,
            train_loop_config={
                "pool": handle,
                "runner": rid,
                "checkpoints": s["checkpoints"],
                "may_quantize": s["may_quantize"],
            },
            torch_config=TorchConfig(backend="nccl" if use_gpu else "gloo"),
            scaling_config=ray.train.ScalingConfig(
                num_workers=s["workers"],
                use_gpu=use_gpu,
                resources_per_worker=per_worker,
                placement_strategy=s["placement_strategy"],
            ),
            run_config=ray.train.RunConfig(
                name=f"runner-{rid}-{int(time.time())}",
                storage_path=s["pools_dir"],
                storage_filesystem=s["filesystem"],
                # A trial that raises restarts the group once (its workers may wait in a collective), and
                # a killed worker once; once out of restarts, the pool starts a fresh runner.
                failure_config=ray.train.FailureConfig(max_failures=s["max_failures"] + 3),
            ),
        )


# -- inside each worker ------------------------------------------------------------------------------


def serve_trials(config: dict) -> None:
    """Ray Train's entry point for a runner: train the trials the pool hands out until it says exit."""
    import ray
    import ray.train

    from .train_loop import train
    from .trial import classify

    if not config["may_quantize"]:
        skip_bitsandbytes()
    pool, runner = config["pool"], config["runner"]
    checkpoints = Checkpoints(**config["checkpoints"])
    rank = ray.train.get_context().get_world_rank()
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
            train({"spec": job["spec"], "trial_id": slot}, session)
        except Exception as e:
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


@dataclass
class Checkpoints:
    """A study's adapter checkpoints: ``<runs_dir>/<slot>/checkpoint_s<step>``, on local disk or a pyarrow
    filesystem (None: local), keeping each trial's latest and its best by the objective (the newer one on
    a tie, as Ray Train's own rule)."""

    runs_dir: str
    filesystem: object
    metric: str
    mode: str
    slot: str | None = None

    def for_trial(self, slot: str) -> Checkpoints:
        return replace(self, slot=slot)

    @property
    def folder(self) -> str:
        return f"{self.runs_dir}/{self.slot}"

    @property
    def fs(self):
        import pyarrow.fs

        return self.filesystem or pyarrow.fs.LocalFileSystem()

    def names(self) -> list[str]:
        """The trial's checkpoint folder names, oldest first."""
        import pyarrow.fs

        infos = self.fs.get_file_info(pyarrow.fs.FileSelector(self.folder, allow_not_found=True))
        return sorted(
            i.base_name
            for i in infos
            if i.type == pyarrow.fs.FileType.Directory and i.base_name.startswith(CHECKPOINT_PREFIX)
        )

    def latest(self) -> Path | None:
        """A local folder holding the trial's latest checkpoint (downloaded if remote), or None."""
        names = self.names()
        if not names:
            return None
        path = f"{self.folder}/{names[-1]}"
        if self.filesystem is None:
            return Path(path)
        import tempfile

        import pyarrow.fs

        local = Path(tempfile.mkdtemp(prefix="raylora-resume-"))
        pyarrow.fs.copy_files(path, str(local), source_filesystem=self.filesystem)
        return local

    def save(self, local: Path, step: int, metrics: dict) -> str:
        """Store folder ``local`` as the checkpoint of ``step``; return its path; drop superseded ones."""
        import json

        import pyarrow.fs

        (local / REPORT_FILE).write_text(json.dumps({"step": step, self.metric: metrics.get(self.metric)}))
        name = f"{CHECKPOINT_PREFIX}{step:07d}"
        path = f"{self.folder}/{name}"
        self.fs.create_dir(path, recursive=True)
        pyarrow.fs.copy_files(str(local), path, destination_filesystem=self.fs)
        self._prune(name)
        return path

    def _prune(self, latest: str) -> None:
        import json
        import math

        sign = 1.0 if self.mode == "min" else -1.0
        scored = []
        for name in self.names():
            value = self._read(f"{self.folder}/{name}/{REPORT_FILE}")
            value = json.loads(value).get(self.metric) if value else None
            scored.append((sign * value if isinstance(value, (int, float)) else math.inf, name))
        best, best_value = latest, math.inf
        for value, name in scored:  # oldest first, so the newer one wins a tie
            if value <= best_value:
                best, best_value = name, value
        for _, name in scored:
            if name not in (best, latest):
                try:
                    self.fs.delete_dir(f"{self.folder}/{name}")
                except OSError:
                    pass  # gone already

    def _read(self, path: str) -> str | None:
        try:
            with self.fs.open_input_stream(path) as f:
                return f.read().decode()
        except OSError:
            return None


class PoolSession:
    """The training recipe's session on a runner's worker: rank 0 writes adapter checkpoints to
    :class:`Checkpoints` and sends the reports to the pool; every worker gets rank 0's stop answer."""

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

    def latest_checkpoint(self) -> Path | None:
        self._resume = self.checkpoints.latest()
        return self._resume

    def report(self, metrics: dict, write_checkpoint=None) -> None:
        import tempfile

        import ray

        if self.rank != 0:
            return
        out = dict(metrics)
        if write_checkpoint is not None:
            with tempfile.TemporaryDirectory(prefix="raylora-ckpt-") as tmp:
                write_checkpoint(Path(tmp))
                out["checkpoint_path"] = self.checkpoints.save(Path(tmp), int(metrics["step"]), metrics)
        ray.get(self.pool.report.remote(self.trial_id, out))

    def finish(self, write_final) -> None:
        """The last reported checkpoint already holds the final adapter."""

    def close(self) -> None:
        import shutil

        if self._resume is not None and self.checkpoints.filesystem is not None:
            shutil.rmtree(self._resume, ignore_errors=True)


def skip_bitsandbytes() -> None:
    """Keep this process from importing bitsandbytes (the study never quantizes).

    PEFT and transformers import it eagerly whenever it is installed, which costs a worker a second or more.
    """
    import sys

    sys.modules.setdefault("bitsandbytes", None)
