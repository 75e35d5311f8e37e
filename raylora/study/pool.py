"""The trial pool actor: the study's queue of trials and the runner threads that own its worker groups.

A fresh ``TorchTrainer`` per trial starts a Train controller, its helper actors and every worker process
again, and each worker imports torch, transformers and PEFT again: on a small node that is most of a short
trial's time, and on a GPU cluster it adds a CUDA context and a process group per trial. Here each of the
study's concurrent trial slots is one Ray Train run whose workers (DDP across nodes, placed by Ray
Train as before) take trial after trial from :class:`TrialPool`:

    Tune trial driver ──submit/poll──▶ TrialPool actor ◀──next_job/report/finished── rank 0 of a runner

* Each runner's Train controller runs in the runner's thread, not as an actor of its own
  (:func:`run_controller_here`): one process start and one torch import fewer before each group's first step.
  Its PyTorch backend (:mod:`raylora.study.torch_backend`) imports torch on the workers alone, so this
  process never does.
* A trial's adapter checkpoints are written by rank 0 to ``<study>/runs/<slot>/checkpoint_s<step>``
  (:class:`~raylora.study.checkpoints.Checkpoints`), keeping the latest and the best; a trial restarted
  on any runner resumes there.
* A worker that dies, or a trial that raises, ends the runner's worker group; Ray Train starts it again and
  the pool hands the interrupted trial back (up to ``resources.max_failures`` times) or moves on. A trial
  that raised is reported FAILED (INFEASIBLE for out of memory) first, so one bad trial never takes the
  study down and never leaves a worker waiting in a collective.
* The scheduler's early stops reach the workers through :meth:`TrialPool.is_stopped`, asked once per step.
* The actor itself may die (an OOM killer's pick, its node): Ray restarts it a bounded number of times
  (:data:`RESTARTS`) with an empty queue, each trial driver submits its trial again, and the trial resumes
  from its checkpoint on a fresh runner. Once out of restarts, the trials are unfinished, not failed.

This file is the actor's process; :mod:`raylora.study.pool_worker` is what each worker process runs.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass, field

from ..record.states import EXIT, INFRA_FAULT, JobState, TrialState
from .watchdog import RESTARTS as RESTARTS_AFTER_STALL
from .watchdog import Watchdog

RESTARTS = 3
"""How often Ray restarts a dead pool actor before the study stops (its trials then resume on --resume)."""

ALONE_S = 120.0
"""The study's first worker group starts alone, and the others once it trains (or fails, or after this
many seconds): on a small node the groups' start-up (processes importing torch, transformers and PEFT)
shares the same cores, and the first step comes sooner; a study that cannot train fails on one group."""


@dataclass
class _Job:
    spec: dict
    reports: list[dict] = field(default_factory=list)
    state: JobState = JobState.QUEUED
    error: tuple[str, str] | None = None
    attempts: int = 0
    stalled: str | None = None  # why the watchdog last ended its workers
    stalls: int = 0  # how often it did
    restarting: bool = False  # its workers were ended by the watchdog and start again


@dataclass
class _Runner:
    current: str | None = None
    alive: bool = True
    served: int = 0
    phase: dict | None = None  # {"phase", "since"} while its group starts, before it asks for a trial
    ranks: set[int] = field(default_factory=set)  # workers of the group that are up


class TrialPool:
    """The study's trial queue and its runners (run as a threaded Ray actor).

    ``runner`` holds what every runner's Ray Train trainer needs: ``workers``, ``cpus_per_worker``,
    ``gpus_per_worker``, ``placement_strategy``, ``max_failures`` (restarts per trial), ``pools_dir`` and
    ``filesystem`` (where Ray Train keeps the runners' own state) and the ``checkpoints`` settings
    (:class:`~raylora.study.checkpoints.Checkpoints`' arguments), plus ``may_quantize`` and ``autoscaler``
    (False on a Ray the driver started: :func:`without_autoscaler`).
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
        self.live: dict[str, dict] = {}  # slot -> rank 0's latest step (see progress)
        self.watchdog = Watchdog(runner.get("watchdog_s"))
        self.workers: dict[int, dict[int, object]] = {}  # runner -> rank -> its worker actor
        self._watching = False
        self.first_started: float | None = None  # when the first group started (it starts alone)
        self.trained = False  # a trial trained, failed or ended: the other groups may start

    # -- the Tune side --------------------------------------------------------------------------------

    def submit(self, slot: str, spec: dict) -> None:
        """Queue trial ``slot`` (a resumed trial is queued again and resumes from its checkpoint)."""
        with self.cond:
            self.jobs[slot] = job = _Job(spec)
            self.stopped.discard(slot)
            if self.broken:
                job.state, job.error = JobState.FAILED, self.broken
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
            job = self.jobs.get(slot)
            if job is None:  # this pool is a restart of the one the trial was submitted to
                return [], JobState.LOST, None
            self.cond.wait_for(
                lambda: (
                    len(job.reports) > cursor
                    or job.state in (JobState.DONE, JobState.FAILED)
                    or slot in self.stopped
                ),
                timeout=timeout,
            )
            state = JobState.STOPPED if slot in self.stopped else job.state
            return job.reports[cursor:], state, job.error

    def first_step(self, timeout: float) -> bool:
        """Wait until the first trial trains (the base model's scoring starts then, off the first group's
        start-up); True when it did within ``timeout`` s."""
        with self.cond:
            return self.cond.wait_for(lambda: self.trained or self.closing, timeout=timeout)

    def stop(self, slot: str) -> None:
        """The scheduler stopped ``slot``: its workers end it at their next step and take the next trial."""
        with self.cond:
            self.stopped.add(slot)
            self.cond.notify_all()

    def is_stopped(self, slot: str) -> bool:
        """Whether ``slot``'s workers should end it at their next step: the scheduler stopped it, or the
        study is over (Ctrl-C, a storage fault) and nobody would hear its reports."""
        return slot in self.stopped or self.closing

    def snapshot(self) -> dict[str, dict]:
        """Where each running trial is: ``{slot: {step, max_steps, train/loss, samples_per_s, at}}`` once it
        trains, ``{slot: {phase, since}}`` while its worker group starts (a queued trial gets the phase of
        the group that will take it, with its ``group``; a starting group no trial waits for yet is
        ``workers <group>``)."""
        with self.cond:
            out = {
                slot: {**self.live[slot], "heard_s": self.watchdog.age(slot)}
                for slot, job in self.jobs.items()
                if job.state == JobState.RUNNING and slot in self.live and slot not in self.stopped
            }
            starting = [
                {**r.phase, "group": rid}
                for rid, r in self.runners.items()
                if r.alive and r.current is None and r.phase
            ]
            waiting = [slot for slot in self.queue if slot not in self.stopped]
            out.update(dict(zip(waiting, starting, strict=False)))
            # a group restarting under its trial (a worker died) says so instead of the trial's last step
            out.update(
                {
                    r.current: {**r.phase, "group": rid}
                    for rid, r in self.runners.items()
                    if r.current and r.phase
                }
            )
            # a group started ahead of its trial (Tune has not submitted it yet) is heard too
            out.update({f"workers {p['group']}": p for p in starting[len(waiting) :]})
            return out

    def drain(self, timeout: float) -> bool:
        """Wait up to ``timeout`` s for every started trial's workers to stop (after :meth:`close`, they stop
        at their next step); True when none trains any more."""
        with self.cond:
            return self.cond.wait_for(
                lambda: not any(job.state == JobState.RUNNING for job in self.jobs.values()), timeout=timeout
            )

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
            state.phase = None  # its group is up and asks for work: no longer starting
            if fresh and state.current is not None:
                slot, job = state.current, self.jobs[state.current]
                self.watchdog.forget(slot)
                if self._may_restart(job) and slot not in self.stopped:
                    return {"trial_id": slot, "spec": job.spec}
                self._end(state, job, JobState.FAILED, _out_of_restarts(job))
            self.cond.wait_for(lambda: self.queue or self.closing, timeout=timeout)
            if self.closing:
                return EXIT
            while self.queue:
                slot = self.queue.popleft()
                job = self.jobs[slot]
                if slot in self.stopped or job.state != JobState.QUEUED:
                    continue
                job.state, state.current = JobState.RUNNING, slot
                state.served += 1
                return {"trial_id": slot, "spec": job.spec}
            return None

    def checked_in(self, runner: int, rank: int) -> None:
        """Worker ``rank`` of ``runner``'s group is up (a rank seen again: the group restarted)."""
        from ..train.session import Phase, phase_text

        with self.cond:
            state = self.runners[runner]
            state.ranks = {rank} if rank in state.ranks else state.ranks | {rank}
            workers = self.settings["workers"]
            up = len(state.ranks)
            phase = phase_text(Phase.STARTING_WORKERS, up, workers) if up < workers else Phase.IMPORTING
            state.phase = _phase(state.phase, phase)

    def phase(self, slot: str, text: str) -> None:
        """Rank 0 of trial ``slot`` is in a start-up phase (:class:`~raylora.train.session.Phase`)."""
        with self.cond:
            self.live[slot] = _phase(self.live.get(slot), text)

    def _may_restart(self, job: _Job) -> bool:
        """Whether a trial whose workers died goes on from its checkpoint: after the watchdog ended them, up
        to :data:`~raylora.study.watchdog.RESTARTS` times; otherwise up to ``max_failures`` times."""
        if job.restarting:
            job.restarting = False
            return job.stalls <= RESTARTS_AFTER_STALL
        job.attempts += 1
        return job.attempts <= self.settings["max_failures"]

    def progress(self, slot: str, values: dict) -> None:
        """Rank 0's latest step of trial ``slot`` (between evaluations; for the live view only)."""
        with self.cond:
            self.live[slot] = {**values, "at": time.time()}
            self.watchdog.heard(slot)
            self._let_others_start()

    def enlist(self, runner: int, rank: int, worker) -> None:
        """A runner's worker (its actor handle), for the watchdog to end when the trial stalls."""
        with self.cond:
            self.workers.setdefault(runner, {})[rank] = worker

    def report(self, slot: str, metrics: dict) -> None:
        with self.cond:
            if not metrics.get("replayed"):
                self.watchdog.heard(slot)
            if slot not in self.stopped:
                self.jobs[slot].reports.append(metrics)
                self.cond.notify_all()

    def finished(self, runner: int, slot: str) -> None:
        with self.cond:
            self._end(self.runners[runner], self.jobs[slot], JobState.DONE, None)

    def failed(self, runner: int, slot: str, status: str, message: str) -> None:
        """Trial ``slot`` raised on some worker; the first report wins (its group restarts next)."""
        with self.cond:
            state = self.runners[runner]
            if state.current == slot:
                self._end(state, self.jobs[slot], JobState.FAILED, (status, message))

    # -- runners ---------------------------------------------------------------------------------------

    def _end(self, runner: _Runner, job: _Job, state: JobState, error: tuple | None) -> None:
        job.state, job.error = state, error
        self._let_others_start()
        if runner.current is not None:
            self.watchdog.forget(runner.current)
        if runner.current is not None and self.jobs.get(runner.current) is job:
            runner.current = None
        self.cond.notify_all()

    def _grow(self, wanted: int) -> None:
        """Start a runner if fewer than ``wanted`` are free and the study allows one more (after the first
        group trained: :data:`ALONE_S`)."""
        live = [r for r in self.runners.values() if r.alive]
        if live and self._alone():
            return
        if sum(r.current is None for r in live) < wanted and len(live) < self.max_runners:
            self._start_runner()

    def _alone(self) -> bool:
        """Whether the first group is still starting on its own (:data:`ALONE_S`)."""
        started = self.first_started
        return not self.trained and started is not None and time.monotonic() - started < ALONE_S

    def _let_others_start(self) -> None:
        """The first group trained (or a trial ended, or its time alone is up): start what the queue needs."""
        if self.trained:
            return
        self.trained = True
        self.cond.notify_all()
        for _ in range(self.max_runners):
            self._grow(len(self.queue))

    def _start_runner(self) -> None:
        import ray

        from ..train.session import Phase, phase_text

        rid = len(self.runners)
        self.first_started = self.first_started or time.monotonic()
        starting = phase_text(Phase.STARTING_WORKERS, 0, self.settings["workers"])
        self.runners[rid] = _Runner(phase=_phase(None, starting))
        handle = ray.get_runtime_context().current_actor
        threading.Thread(target=self._run, args=(rid, handle), daemon=True, name=f"runner-{rid}").start()
        if not self._watching:
            self._watching = True
            threading.Thread(target=self._watch, daemon=True, name="watchdog").start()

    def _watch(self) -> None:
        """Every few seconds: end the workers of a trial that stopped reporting (:mod:`.watchdog`); Ray
        Train starts them again and the trial resumes from its checkpoint (see :meth:`next_job`). And free
        the placement groups of a pool actor that died (:func:`free_orphaned_groups`)."""
        import ray

        while not self.closing:
            time.sleep(5.0)
            with self.cond:
                stalled = self._stalled()
                if self.first_started is not None and not self._alone():  # its time alone is up
                    self._let_others_start()
            for worker in stalled:
                try:
                    ray.kill(worker, no_restart=True)
                except Exception:  # gone already
                    pass
            try:
                free_orphaned_groups()
            except Exception:  # the GCS is restarting, or the study is ending
                pass

    def _stalled(self) -> list:
        workers = []
        for rid, runner in self.runners.items():
            slot = runner.current
            silent = self.watchdog.stalled(slot) if slot and slot not in self.stopped else None
            if silent is None:
                continue
            limit = self.watchdog.limit(slot)
            job = self.jobs[slot]
            job.stalled = f"its workers reported nothing for {silent:.0f} s (watchdog {limit:.0f} s)"
            job.stalls, job.restarting = job.stalls + 1, True
            self.watchdog.forget(slot)
            workers += list(self.workers.pop(rid, {}).values())
        return workers

    def _run(self, rid: int, handle) -> None:
        from ..record.states import classify

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
                    job.state = JobState.QUEUED  # its next runner resumes it from its checkpoint
                    self.queue.appendleft(slot)
                else:
                    error = error or (TrialState.FAILED, "its worker group ended")
                    self._end(state, job, JobState.FAILED, error)
            if not state.served and not self.closing:
                # This group never reached a trial: another would not either. Fail what waits, loudly.
                self.broken = error or (TrialState.FAILED, "the worker group ended before its first trial")
                while self.queue:
                    self._end(state, self.jobs[self.queue.popleft()], JobState.FAILED, self.broken)
            elif self.queue and not self.closing:
                self._start_runner()
            self._let_others_start()

    def _trainer(self, rid: int, handle):
        import ray.train
        from ray.train.v2.api.data_parallel_trainer import DataParallelTrainer

        from .torch_backend import WorkerTorchConfig

        s = self.settings
        use_gpu = s["gpus_per_worker"] > 0
        per_worker = {"CPU": s["cpus_per_worker"], **({"GPU": s["gpus_per_worker"]} if use_gpu else {})}
        from .pool_worker import serve_trials

        return _lean(DataParallelTrainer, autoscaler=s.get("autoscaler", True))(
            serve_trials,
            train_loop_config={
                "pool": handle,
                "runner": rid,
                "checkpoints": s["checkpoints"],
                "may_quantize": s["may_quantize"],
            },
            backend_config=WorkerTorchConfig(backend="nccl" if use_gpu else "gloo"),
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


UNUSED_CALLBACKS = frozenset({"DatasetsCallback", "PlacementGroupCleanerCallback"})
"""Ray Train callbacks a runner has no use for, each one more Python process importing Ray Train (2-4
CPU-s) beside the workers' start-up, before the first step. The datasets callback starts a dataset-manager
actor for every worker group, Ray Datasets or none, and a runner passes none. The placement-group cleaner
(a detached actor per worker group, asking the dashboard's State API whether its controller lives) is
replaced by :func:`free_orphaned_groups`, which the pool's watchdog thread runs: Ray keeps the placement
group of an actor that died while its job lives (the runners' controllers run in the pool actor:
:func:`run_controller_here`)."""


def free_orphaned_groups() -> list[str]:
    """Remove this job's placement groups whose creator actor is dead (the pool actor that ran the
    group's Train controller, killed by the OOM killer or with its node): their workers are gone, but Ray
    would hold their resources until the study's driver exits, and a fresh worker group would wait for
    them. Returns the ids removed.

    Ray's public ``placement_group_table`` leaves out the creator; the GCS record it is built from has it.
    A group made by the driver (Tune's) has no creator actor and is never touched."""
    import ray
    from ray._private.state import state
    from ray.core.generated import gcs_pb2
    from ray.util.placement_group import PlacementGroup, remove_placement_group

    job = bytes.fromhex(ray.get_runtime_context().get_job_id())
    freed = []
    for raw in state._connect_and_get_accessor().get_placement_group_table():
        group = gcs_pb2.PlacementGroupTableData.FromString(raw)
        if orphaned(group, job):
            remove_placement_group(PlacementGroup(ray.PlacementGroupID(group.placement_group_id)))
            freed.append(group.placement_group_id.hex())
    return freed


def orphaned(group, job: bytes) -> bool:
    """Whether ``group`` (a GCS ``PlacementGroupTableData``) is one :func:`free_orphaned_groups` removes:
    not removed yet, made by job ``job`` from an actor (a driver's group has the nil actor id, all 0xff
    bytes) that is dead, and not detached (a detached group outlives its creator on purpose)."""
    from ray.core.generated import gcs_pb2

    return (
        group.state != gcs_pb2.PlacementGroupTableData.REMOVED
        and group.creator_job_id == job
        and group.creator_actor_dead
        and bool(group.creator_actor_id.strip(b"\xff"))
        and not group.is_detached
    )


def _lean(trainer_cls, autoscaler: bool = True):
    """``trainer_cls`` without :data:`UNUSED_CALLBACKS` among its default callbacks, its controller run in
    the calling thread (:func:`run_controller_here`) and, on a Ray with no ``autoscaler`` (one the driver
    started), without asking Ray Data's autoscaling coordinator for the group's resources
    (:func:`without_autoscaler`)."""

    class Lean(trainer_cls):
        def _create_default_callbacks(self):
            callbacks = super()._create_default_callbacks()
            return [c for c in callbacks if type(c).__name__ not in UNUSED_CALLBACKS]

        def _initialize_and_run_controller(self, **kwargs):
            if not autoscaler and "scaling_policy" in kwargs:
                kwargs["scaling_policy"] = without_autoscaler(kwargs["scaling_policy"])
            return run_controller_here(**kwargs)

    Lean.__name__ = Lean.__qualname__ = trainer_cls.__name__
    return Lean


def run_controller_here(**kwargs):
    """Ray Train's controller for one worker group, run in this thread (a runner thread of the pool actor)
    rather than as an actor of its own, and its result.

    Ray Train starts the controller as a new Python process with its own runtime environment; it imports
    torch (for the Torch backend) before it asks for the group's placement, and the group's workers then
    inherit that runtime environment, so none of them can land in a process Ray started ahead. That was 4-7 s
    and ~9 CPU-s on the path to every group's first step, and again at each group restart. The pool actor has
    imported torch already, and it lives exactly as long as its runners need their controllers: a dead pool
    actor takes its controllers and their worker groups with it, as the controller actors' owner did. The
    groups' placement groups are then the pool actor's: when it dies, even to be restarted, the GCS marks
    their creator dead, and :func:`free_orphaned_groups` frees them."""
    import asyncio

    from ray.train.v2._internal.execution.controller import TrainController

    with _CONTROLLER_START:
        controller = TrainController(**kwargs)
        _keep_controller_logging()
    asyncio.run(controller.run())
    return controller.get_result()


_CONTROLLER_START = threading.Lock()


def _keep_controller_logging() -> None:
    """After the process's first Train controller configured logging, the others keep it.

    Each ``TrainController`` reconfigures its process's logging (``logging.config.dictConfig`` holds
    logging's module lock while it takes every handler's lock to close it), and a running controller's
    first record opens its log file under its handler's lock and then takes the module lock. Built as
    separate actors, controllers never share a process; two runners' controllers in the pool actor
    deadlocked at start (a quickstart study hung with three trials at once). Ray Train's own switch
    (``RAY_TRAIN_ENABLE_CONTROLLER_STRUCTURED_LOGGING``) is no way out: it is passed on to the workers,
    and a worker group whose environment differs from the first's gets no pre-started processes. Called
    under :data:`_CONTROLLER_START`, so controllers are also built one at a time."""
    from ray.train.v2._internal.logging import LoggingManager

    LoggingManager.configure_controller_logger = staticmethod(_configured_already)


def _configured_already(context) -> None:
    """Ray Train's controller logging, once the process has it: left as it is."""


def without_autoscaler(policy):
    """Ray Train's fixed-size scaling ``policy``, sending no resource requests: each controller's first
    call asks a cluster-wide coordinator actor, which the first worker group waits to start (one more
    Python process importing Ray Data, ~3 CPU-s before the first step), for an autoscaler to add nodes.
    A Ray the driver started has no autoscaler. Any other policy is returned as it is."""
    if type(policy).__name__ == "FixedScalingPolicy":
        policy.after_controller_start = policy._maybe_send_resource_request = _nothing
    return policy


def _nothing(*args, **kwargs) -> None:
    return None


def _phase(current: dict | None, text: str) -> dict:
    """``{phase, since}``: ``since`` stays when the same phase only advances (``indexing the data 3/9``)."""
    from ..train.session import phase_name

    if current and "phase" in current and phase_name(current["phase"]) == phase_name(text):
        return {"phase": str(text), "since": current["since"]}
    return {"phase": str(text), "since": time.time()}


def _out_of_restarts(job: _Job) -> tuple[str, str]:
    if job.stalled:  # not the trial's verdict: it stays unfinished, for --resume
        return INFRA_FAULT, f"{job.stalled}; restarted {job.stalls - 1} time(s) already"
    restarts = job.attempts - 1
    return (
        TrialState.FAILED,
        f"WorkerDied: a worker died and the trial was restarted {restarts} time(s) already",
    )
