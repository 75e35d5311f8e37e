"""``raylora search``: the only place that starts Ray and runs Tune.

Data flow: spec (validated on the driver) → Optuna define-by-run space → Tune (StudySearcher + ASHA) →
the trial pool (one long-lived TorchTrainer per concurrent trial) → ``train_loop`` on each worker →
reports back → ``summary.json``.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from . import capacity, space
from .errors import UserError
from .spec import Spec
from .storage import PENDING, LocalStorage, UriStorage
from .study import StudyRecord, TrialRecord, open_optuna


@dataclass
class Plan:
    """What a search will do, printed by ``--dry-run`` and before a real run."""

    study_dir: Path
    remaining: int
    resumed: list[str]
    max_concurrent: int
    nodes: list[capacity.Node]
    scheduler: str
    runs_link: str | None = None
    storage: LocalStorage | UriStorage | None = None  # where the study lives; study_dir holds its state
    unfinished: list[str] | None = None  # trials an interrupted study left for --resume


def study_storage(spec: Spec, storage: str | None, log: Callable[[str], None] = print):
    """``<storage>/<study.name>``: a local or NFS folder, or a pyarrow URI (``s3://bucket/prefix``)."""
    from .storage import open_storage

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
    """Run (or continue) the study; return the plan and the final record."""
    where = study_storage(spec, storage, log)
    where.check()
    where.pull()
    directory = where.directory
    record = StudyRecord.open(directory, spec)
    record.on_save = where.push
    if record.trials and not resume and not dry_run:
        raise UserError(
            "study.name",
            f"study {spec.study.name!r} already exists in {where.location}; "
            "continue it with --resume, or choose another study.name or --storage",
        )
    optuna_study = open_optuna(directory, spec) if not dry_run else None
    pending = _prepare_resume(record, optuna_study) if optuna_study is not None else []
    remaining = spec.study.num_trials - len(record.finished())
    if not dry_run and (directory / PENDING).is_file():
        from . import tracking

        tracking.send_pending(where, tracking.tracking_uri(tracking_uri, spec), remaining > 0, log)
    if remaining <= 0 and not dry_run:
        return Plan(directory, 0, [], 0, [], _scheduler_name(spec), storage=where), record

    # MLflow's import and a new store's migrations take seconds: they run while Ray starts.
    opening = None if dry_run else _in_background(_open_tracker, spec, tracking_uri, where, log)
    _init_ray(address)
    import ray

    nodes = capacity.nodes_from_ray(ray.nodes())
    capacity.check_fits(spec.resources, nodes)
    if len(nodes) > 1 and not dry_run and not where.remote:
        _check_shared(directory, nodes)  # object storage is shared by definition
    wanted = spec.study.max_concurrent_trials
    auto = capacity.max_concurrent(spec.resources, nodes, max(remaining, 1))
    concurrent = auto if wanted == "auto" else min(wanted, max(remaining, 1))
    plan = Plan(
        directory,
        max(remaining, 0),
        [t.trial_id for t in pending],
        concurrent,
        nodes,
        _scheduler_name(spec),
        storage=where,
    )
    if dry_run:
        return plan, record
    pool = _pool(spec, plan)
    if spec.resources.gpu_memory_gb is None:  # else the first trial may be screened out: wait and see
        pool.warm.remote()  # the first workers start while MLflow and Tune get ready

    from .progress import Progress

    progress = Progress(spec, record, log)
    tracker = opening.result()
    tracker.start_study(record)
    tracker.end_stale_runs(record)
    progress.begin(plan)

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

    _tune(spec, plan, pool, optuna_study, record, pending, on_event)
    progress.end()
    tracker.end_study(record)
    _write_report(spec, plan.study_dir, record, optuna_study, tracker)
    where.push(report=True)
    tracker.close()
    record.save()
    plan.runs_link = tracker.runs_link() or f"mlflow ui --backend-store-uri {tracker.uri}"
    # Tune returns early on Ctrl-C: whatever still runs was interrupted, and resumes from its checkpoint.
    plan.unfinished = sorted(t.trial_id for t in record.unfinished())
    return plan, record


def _in_background(fn, *args):
    from concurrent.futures import ThreadPoolExecutor

    pool = ThreadPoolExecutor(1, thread_name_prefix="raylora")
    future = pool.submit(fn, *args)
    pool.shutdown(wait=False)  # the submitted call still runs; nothing else will be
    return future


def _open_tracker(spec: Spec, tracking_uri: str | None, where, log: Callable[[str], None]):
    from . import tracking

    tracker = tracking.Tracker(spec, tracking.tracking_uri(tracking_uri, spec), where, log)
    tracker.connect()
    return tracker


def _write_report(spec: Spec, directory: Path, record: StudyRecord, optuna_study, tracker) -> None:
    from . import report

    out = report.write(directory / "report", record, optuna_study)
    tracker.log_report(out)


def _prepare_resume(record: StudyRecord, optuna_study) -> list[TrialRecord]:
    """Settle what a crash left behind; return the unfinished slots to run again.

    Optuna is told first when a trial ends, then ``summary.json`` is saved: a trial Optuna already
    finished is finished in the summary too (not run a second time), and Optuna trials still RUNNING fail.
    """
    import optuna

    TS = optuna.trial.TrialState
    told = {t.number: t for t in optuna_study.get_trials(deepcopy=False) if t.state != TS.RUNNING}
    settled = [t for t in record.unfinished() if t.optuna_number in told]
    for trial in settled:
        frozen = told[trial.optuna_number]
        if frozen.state == TS.COMPLETE:
            trial.state, trial.value = "COMPLETE", frozen.value
        elif frozen.state == TS.PRUNED and frozen.constraints.get("out_of_memory", 0.0) > 0:
            trial.state, trial.value, trial.error = "INFEASIBLE", None, "out of memory"
        elif frozen.state == TS.PRUNED:
            trial.state, trial.value = "PRUNED", trial.last_value
        else:
            trial.state, trial.value = "FAILED", None
            trial.error = frozen.user_attrs.get("error", "failed")
    if settled:
        record.save()
    for frozen in optuna_study.get_trials(deepcopy=False, states=(TS.RUNNING,)):
        optuna_study.tell(frozen.number, state=TS.FAIL)
    return sorted(record.unfinished(), key=lambda t: t.trial_id)


# Ray settings exported to the trial drivers and the runners' controllers and workers. Trial drivers are
# reused, and Tune gives a stopped trial's driver only 2 s to return before it fails the next trial instead.
# The preemption watcher is one more actor per runner and only matters on spot capacity (set
# RAY_TRAIN_ENABLE_PREEMPTION_WATCHER=1 to keep it). Values already in the environment win.
TRAIN_ENV = {
    "TUNE_FUNCTION_THREAD_TIMEOUT_S": "600",
    "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "0",
    "RAY_TRAIN_ENABLE_PRINT_PATCH": "0",
    "RAY_TRAIN_METRICS_ENABLED": "0",
}


def _init_ray(address: str | None) -> None:
    # Environment first: Ray reads some of it when it is imported.
    for key, value in TRAIN_ENV.items():
        os.environ.setdefault(key, value)
    passed = ("RAYLORA_HOME", "RAYLORA_INJECT_OOM", *TRAIN_ENV)
    env = {k: os.environ[k] for k in passed if k in os.environ}
    # Tune's new output engine prints experiment banners even when silent; ours is in progress.py.
    os.environ["RAY_AIR_NEW_OUTPUT"] = "0"
    # A failed trial's final report carries its status instead of the objective, by design.
    os.environ["TUNE_DISABLE_STRICT_METRIC_CHECKING"] = "1"
    if address is not None and "RAY_AUTH_MODE" not in os.environ and _has_ray_token():
        os.environ["RAY_AUTH_MODE"] = "token"  # Ray 2.59+ clusters require it; say so instead of guessing
    if address is None:
        # Trials use fractional CPUs, so a small local node starts more worker processes than Ray's
        # default "expected" count and warns about it; that is by design here.
        os.environ.setdefault("RAY_worker_maximum_startup_concurrency", str(max(8, os.cpu_count() or 1)))
    import ray

    if ray.is_initialized():
        return
    try:
        ray.init(
            address=address if address is not None else _default_address(),
            # The dashboard serves the State API, which Ray Train V2 uses to free a worker group's placement
            # group when its controller dies; it is also where users watch a local study's processes.
            include_dashboard=True if address is None else None,
            log_to_driver=False,
            logging_level=logging.ERROR,
            configure_logging=True,
            runtime_env={"env_vars": env},
        )
    except ConnectionError as e:
        raise UserError("--address", f"cannot connect to a Ray cluster at {address}: {e}") from None


def _default_address() -> str | None:
    """What ``ray.init`` gets without ``--address``: None lets Ray pick ``RAY_ADDRESS`` or the cluster a
    ``ray start`` on this machine recorded; "local" starts a fresh local Ray when that record is stale (its
    cluster was killed without ``ray stop``), where Ray would wait for the dead cluster forever."""
    import socket

    import ray._private.utils

    if os.environ.get("RAY_ADDRESS"):
        return None
    recorded = ray._private.utils.read_ray_address()
    if not recorded:
        return None
    host, _, port = recorded.rpartition(":")
    try:
        socket.create_connection((host, int(port)), timeout=2).close()
    except (OSError, ValueError):
        return "local"
    return None


def _check_shared(directory: Path, nodes: list[capacity.Node]) -> None:
    """Refuse a storage path that not every node sees (Ray would only fail at the first checkpoint)."""
    import uuid

    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    directory.mkdir(parents=True, exist_ok=True)
    marker = directory / f".raylora-shared-{uuid.uuid4().hex}"
    marker.write_text("raylora storage check\n")

    @ray.remote(num_cpus=0)
    def sees(path: str) -> bool:
        return os.path.exists(path)

    try:
        checks = {
            node.address: sees.options(
                scheduling_strategy=NodeAffinitySchedulingStrategy(node.node_id, soft=False)
            ).remote(str(marker))
            for node in nodes
        }
        blind = [address for address, ref in checks.items() if not ray.get(ref, timeout=120)]
    finally:
        marker.unlink(missing_ok=True)
    if blind:
        raise UserError(
            "--storage",
            f"{directory.parent} is not shared: node(s) {', '.join(blind)} cannot see it; on a cluster with "
            "more than one node give an NFS/EFS path mounted on every node",
        )


def _has_ray_token() -> bool:
    """A Ray auth token is at hand: $RAY_AUTH_TOKEN, $RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token."""
    if os.environ.get("RAY_AUTH_TOKEN"):
        return True
    path = os.environ.get("RAY_AUTH_TOKEN_PATH") or Path.home() / ".ray" / "auth_token"
    return Path(path).is_file()


def _scheduler_name(spec: Spec) -> str:
    scheduler = spec.study.scheduler
    grace = scheduler.grace_steps or spec.training.eval_every
    if scheduler.type == "fifo" or grace >= _max_steps(spec):
        return "fifo"
    return f"asha(grace={grace}, reduction={scheduler.reduction_factor:g})"


def _max_steps(spec: Spec) -> int:
    dist = space.distributions(spec).get("training.max_steps")
    return max(dist.candidates()) if dist else spec.training.max_steps


def _scheduler(spec: Spec):
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    if _scheduler_name(spec) == "fifo":
        return FIFOScheduler()
    grace = spec.study.scheduler.grace_steps or spec.training.eval_every
    # max_t below the last step, and no stop at max_t: a trial stopped at its final report keeps its
    # Train placement group on Ray 2.60 and the study hangs. Rungs at earlier steps release fine.
    return ASHAScheduler(
        time_attr="step",
        metric=spec.study.objective.metric,
        mode=spec.study.objective.mode,
        max_t=_max_steps(spec) - 1,
        grace_period=grace,
        reduction_factor=spec.study.scheduler.reduction_factor,
        stop_last_trials=False,
    )


def _tune(spec: Spec, plan: Plan, pool, optuna_study, record: StudyRecord, pending, on_event) -> None:
    import ray.tune

    from .searcher import StudySearcher
    from .trial import run_trial

    def on_event_and_stop(kind: str, trial: TrialRecord, result: dict) -> None:
        if kind == "launch":
            pool.warm.remote()  # workers start while Tune starts the trial's driver
            return
        if kind == "end" and trial.state == "PRUNED":
            pool.stop.remote(trial.trial_id)  # its workers end it at their next step and take the next trial
        on_event(kind, trial, result)

    searcher = StudySearcher(spec, optuna_study, record, pending, on_event=on_event_and_stop)
    tune_dir, filesystem = plan.storage.ray_path("tune")
    trainable = ray.tune.with_parameters(run_trial, base_spec=spec.to_dict(), pool=pool)
    trainable = ray.tune.with_resources(trainable, capacity.trial_driver_resources(plan.nodes))
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
            failure_config=ray.tune.FailureConfig(max_failures=0),
        ),
    )
    try:
        tuner.fit()
    finally:
        pool.close.remote()  # runners wind down while the study is written up; Ray ends them at exit


def _pool(spec: Spec, plan: Plan):
    """The study's :class:`~raylora.pool.TrialPool` actor, on this node (its runners' controllers too)."""
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
