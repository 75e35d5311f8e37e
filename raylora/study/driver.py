"""The study driver behind ``raylora search``: the only place that runs Tune.

Data flow: spec (validated on the driver) → Optuna define-by-run space → Tune (StudySearcher + ASHA) →
the trial pool (one long-lived TorchTrainer per concurrent trial) → the training recipe on each worker →
reports back → ``summary.json`` and MLflow (the driver is their one writer).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ..errors import EnvironmentFault, UserError
from ..spec import Spec, space
from ..tracking.storage import PENDING, LocalStorage, UriStorage
from . import cluster, placement
from .record import StudyRecord, TrialRecord
from .states import TrialState


@dataclass
class Plan:
    """What a search will do, printed by ``--dry-run`` and before a real run."""

    study_dir: Path
    remaining: int
    resumed: list[str]
    max_concurrent: int
    nodes: list[placement.Node]
    scheduler: str
    runs_link: str | None = None
    storage: LocalStorage | UriStorage | None = None  # where the study lives; study_dir holds its state
    unfinished: list[str] | None = None  # trials an interrupted study left for --resume
    dashboard_url: str | None = None  # the Ray dashboard, when Ray serves one


def study_storage(spec: Spec, storage: str | None, log: Callable[[str], None] = print):
    """``<storage>/<study.name>``: a local or NFS folder, or a pyarrow URI (``s3://bucket/prefix``)."""
    from ..tracking.storage import open_storage

    return open_storage(storage or spec.study.storage, spec.study.name, log)


def run(
    spec: Spec,
    *,
    storage: str | None = None,
    address: str | None = None,
    tracking_uri: str | None = None,
    resume: bool = False,
    dry_run: bool = False,
    log: Callable[[str], None] = print,
) -> tuple[Plan, StudyRecord]:
    """Run (or continue) the study; return the plan and the final record.

    One driver per study (:mod:`raylora.study.lock`); a full, read-only or unwritable storage stops the
    study with an :class:`EnvironmentFault`, its unfinished trials kept for ``--resume``.
    """
    from ..tracking.tracker import check_uri
    from ..tracking.tracker import tracking_uri as resolve_uri
    from .lock import StudyLock
    from .states import storage_fault

    cluster.configure(address)  # before the first import of ray, below
    from ..train.init_adapter import with_resolved

    spec = with_resolved(spec, storage or spec.study.storage)  # study:NAME:best → its adapter, once
    where = study_storage(spec, storage, log)
    where.check()
    check_uri(resolve_uri(tracking_uri, spec))
    from ..train.preflight import check_ranks

    check_ranks(spec)
    lock = None if dry_run else StudyLock(where).acquire()
    try:
        return _run(spec, where, address, tracking_uri, resume, dry_run, log)
    except Exception as e:  # Tune may wrap what a full disk raised in its callbacks
        fault = None if isinstance(e, (UserError, EnvironmentFault)) else storage_fault(e)
        if fault is None:
            raise
        raise EnvironmentFault("", f"{fault}; the study stopped, fix it and continue with --resume") from None
    finally:
        if lock is not None:
            lock.release()


def _run(spec: Spec, where, address, tracking_uri, resume, dry_run, log) -> tuple[Plan, StudyRecord]:
    from . import specfile

    where.pull()
    directory = where.directory
    try:
        record = StudyRecord.open(directory, spec)
        rebuild = False
    except ValueError as e:  # summary.json does not parse (a disk that filled mid-write, a hand edit)
        if dry_run or not (directory / "optuna.journal").is_file():
            raise UserError(
                where.display("summary.json"),
                f"does not parse ({e}); run without --dry-run to rebuild it from optuna.journal, or "
                "restore it",
            ) from None
        record, rebuild = StudyRecord(directory, spec.study.name, *_objective(spec)), True
        record.goals = [(o.metric, o.mode) for o in spec.study.goals]
        record.limits = spec.study.constraint_limits()
    record.on_save = where.push
    if (record.trials or rebuild) and not resume and not dry_run:
        raise UserError(
            "study.name",
            f"study {spec.study.name!r} already exists in {where.location}; "
            "continue it with --resume, or choose another study.name or --storage",
        )
    if resume:
        specfile.check(directory, spec)
    optuna_study = pending = None
    if not dry_run:
        from .optuna_searcher import open_optuna, settle_interrupted

        optuna_study = open_optuna(directory, spec, log)
        from .warm import warm_start

        warm_start(optuna_study, spec, log)  # a new study only: earlier trials as the sampler's prior
        if rebuild:
            from .repair import rebuild_summary

            rebuild_summary(record, optuna_study, spec, where)
            record.save()
            log(f"warning: {where.display('summary.json')} did not parse; rebuilt it from optuna.journal")
        specfile.save(directory, spec)
        where.push()
        pending = settle_interrupted(record, optuna_study)
    remaining = spec.study.num_trials - len(record.finished())
    if not dry_run and (directory / PENDING).is_file():
        from ..tracking import tracker as tracking

        tracking.send_pending(where, tracking.tracking_uri(tracking_uri, spec), remaining > 0, log)
    if remaining <= 0 and not dry_run:
        return Plan(directory, 0, [], 0, [], _scheduler_name(spec), storage=where), record

    if not dry_run:  # the driver's node downloads a hub model once, where the user sees it
        from ..train import download

        download.ensure_local(spec.model.name_or_path, spec.model.revision, log)
    # MLflow's import and a new store's migrations take seconds: they run while Ray starts.
    opening = None if dry_run else _in_background(_open_tracker, spec, tracking_uri, where, log)
    dashboard_url = cluster.init_ray(address)
    import ray

    nodes = placement.nodes_from_ray(ray.nodes())
    placement.check_fits(spec.resources, nodes)
    if len(nodes) > 1 and not dry_run and not where.remote:
        cluster.check_shared(directory, nodes)  # object storage is shared by definition
    wanted = spec.study.max_concurrent_trials
    auto = placement.max_concurrent(spec.resources, nodes, max(remaining, 1))
    concurrent = auto if wanted == "auto" else min(wanted, max(remaining, 1))
    plan = Plan(
        directory,
        max(remaining, 0),
        [t.trial_id for t in pending or []],
        concurrent,
        nodes,
        _scheduler_name(spec),
        storage=where,
        dashboard_url=dashboard_url,
    )
    if dry_run:
        return plan, record
    from . import baseline

    base = None
    if baseline.wanted(spec):  # before the pool's workers hold the accelerators its task needs
        base = baseline.for_study(spec, directory, log)
        where.push()
    pool = _pool(spec, plan)
    if spec.resources.gpu_memory_gb is None:  # else the first trial may be screened out: wait and see
        pool.warm.remote()  # the first workers start while MLflow and Tune get ready

    from .progress import Progress

    progress = Progress(spec, record, log)
    tracker = opening.result()
    tracker.start_study(record)
    if base:
        tracker.log_baseline(base)
    tracker.end_stale_runs(record)
    progress.begin(plan)
    progress.watch(pool)

    def on_event(kind: str, trial: TrialRecord, result: dict) -> None:
        # Ray reports checkpoints as paths on the storage's filesystem; URI storage names them s3://...
        if result.get("checkpoint_path"):
            result["checkpoint_path"] = where.uri(result["checkpoint_path"])
        if trial.adapter_path:
            trial.adapter_path = where.uri(trial.adapter_path)
        progress.event(kind, trial, result)
        {"start": tracker.trial_started, "end": tracker.trial_ended}.get(kind, lambda t: None)(trial)
        if kind == "result":
            tracker.trial_result(trial, result)

    try:
        searcher = _tune(spec, plan, pool, optuna_study, record, pending, on_event)
    finally:
        progress.end()
    if searcher.fault:  # what can still be written is; the trials stay unfinished for --resume
        _save_what_can_be(record, tracker)
        unfinished = ", ".join(sorted(t.trial_id for t in record.unfinished())) or "none"
        raise EnvironmentFault(
            "",
            f"{searcher.fault}; the study stopped (unfinished: {unfinished}), fix it and continue with "
            "--resume",
        )
    if base:
        baseline.compare_trials(record, where, base)
    tracker.end_study(record)
    _write_report(spec, plan.study_dir, record, optuna_study, tracker)
    from .stopping import warning

    low = warning(list(record.trials.values()), record.mode)  # the report says it too
    if low:
        log(low)
    where.push(report=True)
    tracker.close()
    record.save()
    plan.runs_link = tracker.runs_link() or f"mlflow ui --backend-store-uri {tracker.uri}"
    # Tune returns early on Ctrl-C: whatever still runs was interrupted, and resumes from its checkpoint.
    plan.unfinished = sorted(t.trial_id for t in record.unfinished())
    return plan, record


def _objective(spec: Spec) -> tuple[str, str]:
    return spec.study.objective.metric, spec.study.objective.mode


def _save_what_can_be(record: StudyRecord, tracker) -> None:
    """After a storage fault: save the summary and send MLflow what it can take; the fault is reported
    either way."""
    for step in (record.save, lambda: tracker.close(wait_s=2.0)):
        try:
            step()
        except OSError:
            pass


def _in_background(fn, *args):
    from concurrent.futures import ThreadPoolExecutor

    pool = ThreadPoolExecutor(1, thread_name_prefix="raylora")
    future = pool.submit(fn, *args)
    pool.shutdown(wait=False)  # the submitted call still runs; nothing else will be
    return future


def _open_tracker(spec: Spec, tracking_uri: str | None, where, log: Callable[[str], None]):
    from ..tracking import tracker as tracking

    tracker = tracking.Tracker(spec, tracking.tracking_uri(tracking_uri, spec), where, log)
    tracker.connect()
    return tracker


def _write_report(spec: Spec, directory: Path, record: StudyRecord, optuna_study, tracker) -> None:
    from ..tracking import report

    out = report.write(directory / "report", record, optuna_study)
    tracker.log_report(out)


def _scheduler_name(spec: Spec) -> str:
    from .stopping import scheduler_name

    return scheduler_name(spec, space.largest_max_steps(spec))


def _scheduler(spec: Spec):
    from .stopping import scheduler

    return scheduler(spec, space.largest_max_steps(spec))


def _tune(spec: Spec, plan: Plan, pool, optuna_study, record: StudyRecord, pending, on_event):
    import ray.tune

    from .optuna_searcher import StudySearcher
    from .trainable import run_trial

    def on_event_and_stop(kind: str, trial: TrialRecord, result: dict) -> None:
        if kind == "launch":
            pool.warm.remote()  # workers start while Tune starts the trial's driver
            return
        if kind == "end" and trial.state == TrialState.PRUNED:
            pool.stop.remote(trial.trial_id)  # its workers end it at their next step and take the next trial
        on_event(kind, trial, result)

    searcher = StudySearcher(spec, optuna_study, record, pending, on_event=on_event_and_stop)
    tune_dir, filesystem = plan.storage.ray_path("tune")
    # Tune's own experiment state is never read back (a study resumes from its journal and summary); on a
    # full or read-only storage its failed saves would print a traceback per attempt over raylora's one line.
    import logging

    logging.getLogger("ray.tune.execution.experiment_state").setLevel(logging.CRITICAL)

    class StopOnFault(ray.tune.Stopper):
        """Ends the experiment once a storage fault stopped the study (running trials stay unfinished)."""

        def __init__(self, searcher):
            self.searcher = searcher

        def __call__(self, trial_id: str, result: dict) -> bool:
            return False

        def stop_all(self) -> bool:
            return self.searcher is not None and self.searcher.fault is not None

        def __getstate__(self):
            # Tune pickles its stopper into the experiment state it saves after a trial error; the
            # searcher (its log function, Optuna, the record) must not go with it, and is never read back.
            return {"searcher": None}

    trainable = ray.tune.with_parameters(run_trial, base_spec=spec.to_dict(), pool=pool)
    trainable = ray.tune.with_resources(trainable, placement.trial_driver_resources(plan.nodes))
    tuner = ray.tune.Tuner(
        trainable,
        tune_config=ray.tune.TuneConfig(
            search_alg=searcher,
            scheduler=_scheduler(spec),
            num_samples=plan.remaining,
            max_concurrent_trials=plan.max_concurrent,
            reuse_actors=True,
        ),
        run_config=ray.tune.RunConfig(
            name=f"tune-{int(time.time())}",
            storage_path=tune_dir,
            storage_filesystem=filesystem,
            verbose=0,
            stop=StopOnFault(searcher),
            failure_config=ray.tune.FailureConfig(max_failures=0),
        ),
    )
    try:
        tuner.fit()
    finally:
        pool.close.remote()  # runners wind down while the study is written up; Ray ends them at exit
    if record.unfinished():  # Ctrl-C or a fault: the workers stop at their next step; what they save
        ray.get(pool.drain.remote(30.0))  # meanwhile may replace a checkpoint the summary names
        from .repair import point_at_existing

        point_at_existing(record, spec, plan.storage)
    return searcher


def _pool(spec: Spec, plan: Plan):
    """The study's :class:`~raylora.study.pool.TrialPool` actor, on this node (and so its runners'
    controllers)."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    from .pool import TrialPool

    resources, objective = spec.resources, spec.study.objective
    runs_dir, filesystem = plan.storage.ray_path("runs")
    quantization = space.distributions(spec).get("training.quantization")
    options = quantization.candidates() if quantization else (spec.training.quantization,)
    runner = {
        "workers": resources.workers_per_trial,
        "cpus_per_worker": resources.cpus_per_worker,
        "gpus_per_worker": resources.gpus_per_worker,
        "placement_strategy": resources.placement_strategy,
        "max_failures": resources.max_failures,
        "pools_dir": plan.storage.ray_path("pools")[0],
        "filesystem": filesystem,
        "checkpoints": {
            "runs_dir": runs_dir,
            "filesystem": filesystem,
            "metric": objective.metric,
            "mode": objective.mode,
        },
        "may_quantize": any(q != "none" for q in options),
    }
    here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=True)
    actor = ray.remote(num_cpus=0, max_concurrency=1000, scheduling_strategy=here)(TrialPool)
    return actor.remote(runner, plan.max_concurrent)
