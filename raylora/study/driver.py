"""The study driver behind ``raylora search``: the only place that runs Tune.

    plan      read the study and the cluster: trials left, nodes, trials at once (``--dry-run`` stops here)
    open      take the study: the lock, Optuna's journal, spec.json, interrupted trials settled
    execute   the base model, the trial pool, Tune; then the comparison, the report, MLflow closed

Data flow: spec (validated on the driver) → Optuna define-by-run space → Tune (StudySearcher + ASHA) →
the trial pool (one long-lived Ray Train trainer per concurrent trial) → the training recipe on each worker →
reports back → the searcher's events (:mod:`.listener`) → ``summary.json``, the progress lines and MLflow.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import Future
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from .. import environment
from ..errors import EnvironmentFault, UserError
from ..layout import JOURNAL, LOCK, PENDING, REPORT_DIR, RUNS, SUMMARY, TUNE
from ..record.trials import StudyRecord, TrialRecord
from ..spec import Spec, space
from ..tracking.storage import LocalStorage, UriStorage
from . import cluster, placement, signals


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
    ray_started_here: bool = False  # this driver started the (local) Ray: no autoscaler can add nodes
    record: StudyRecord | None = field(default=None, repr=False)  # the study as it stands
    rebuild: bool = False  # summary.json did not parse: opening the study rebuilds it from the journal
    spec_checked: bool = False  # a resume's spec was checked against spec.json before Ray started
    tracking_uri: str = field(default="", repr=False)  # the MLflow store (credentials stay in this process)
    address: str | None = field(default=None, repr=False)  # --address, as given


@dataclass
class OpenStudy:
    """A study opened for writing: its Optuna study, the trials an interruption left to resume, and the
    MLflow tracker being opened in the background."""

    optuna_study: object
    pending: list[TrialRecord]
    tracker: Future | None


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
    accept_spec: bool = False,
    log: Callable[[str], None] = print,
) -> tuple[Plan, StudyRecord]:
    """Run (or continue) the study; return the plan and the final record.

    Three phases: :func:`plan_study` reads (nothing is written; ``--dry-run`` stops after it),
    :func:`open_study` takes the study for writing, :func:`execute` runs the trials and writes up. One
    driver per study (:mod:`raylora.study.lock`); a full, read-only or unwritable storage stops the study
    with an :class:`EnvironmentFault`, its unfinished trials kept for ``--resume``.
    """
    cluster.configure(address)  # before the first import of ray
    signals.install()  # SIGTERM as Ctrl-C (again after ray.init, which installs its own)
    spec, where = _checked_inputs(spec, storage, log)
    _check_named_store(spec, tracking_uri)
    if not dry_run:  # MLflow's import takes seconds: it runs while the study is read and Ray starts
        _in_background(_import_mlflow)
    # The rank check imports torch and transformers: a search runs it beside Ray's start and stops on
    # its error before the study is written; --dry-run, which must start nothing for it, first.
    ranks = _in_background(_check_ranks, spec) if not dry_run else _check_ranks(spec)
    plan = plan_study(spec, where, address, resume, dry_run, None if dry_run else log, accept_spec)
    if ranks is not None:
        ranks.result()
    plan.tracking_uri = _tracking_uri(spec, where, storage, tracking_uri, log)
    spec = _without_credentials(spec)  # the store's are in plan.tracking_uri; Tune pickles the spec
    _warn_small_space(spec, log)
    if dry_run:
        return plan, plan.record
    with _storage_faults_stop_the_study(), _exclusive(where):
        opened = open_study(spec, plan, resume, log, accept_spec)
        if plan.remaining == 0:
            return plan, plan.record
        return plan, execute(spec, plan, opened, log)


def _checked_inputs(spec: Spec, storage: str | None, log) -> tuple[Spec, object]:
    from ..train.init_adapter import with_resolved

    spec = with_resolved(spec, storage or spec.study.storage)  # study:NAME:best → its adapter, once
    where = study_storage(spec, storage, log)
    where.check()
    return spec, where


def _check_ranks(spec: Spec) -> None:
    from ..train.preflight import check_ranks

    check_ranks(spec, sampled=True)


def _warn_small_space(spec: Spec, log) -> None:
    if space.trials(spec) < spec.study.num_trials:
        log(
            f"warning: the search space holds {space.trials(spec)} configuration(s), fewer than "
            f"study.num_trials ({spec.study.num_trials}); the study trains each once and stops there"
        )


def _without_credentials(spec: Spec) -> Spec:
    """``spec`` with its tracking URI redacted, and nothing else changed (its search space above all):
    what Tune, its workers and the study's files get."""
    from ..redact import redact

    uri = spec.tracking.tracking_uri
    if not uri or redact(uri) == uri:
        return spec
    # Not ``with_values``: that makes one trial's concrete spec, without the study's search section.
    tracking = spec.tracking.model_copy(update={"tracking_uri": redact(uri)})
    return spec.model_copy(update={"tracking": tracking})


def _check_named_store(spec: Spec, tracking_uri: str | None) -> None:
    """Refuse a tracking URI the user named that can never work before Ray starts (seconds of a
    cluster's start-up for a typo); the study's store is resolved once the study is read."""
    from ..tracking import store
    from ..tracking.tracker import check_uri

    named = store.given(tracking_uri, spec.tracking.tracking_uri)
    if named:
        check_uri(named)


def _tracking_uri(spec: Spec, where, storage: str | None, tracking_uri: str | None, log) -> str:
    """The study's MLflow store: the one given, else the one its ``spec.json`` records, else
    ``<storage>/mlflow.db`` (:func:`raylora.tracking.store.for_study`)."""
    from ..tracking import store
    from ..tracking.tracker import check_uri
    from .specfile import stored_uri

    given = store.given(tracking_uri, spec.tracking.tracking_uri)
    uri = store.for_study(given, stored_uri(where.directory), storage or spec.study.storage, log)
    if not given:  # a named store was checked before Ray started (_check_named_store)
        check_uri(uri)
    return uri


@contextmanager
def _exclusive(where):
    from .lock import StudyLock

    lock = StudyLock(where).acquire()
    try:
        yield
    finally:
        lock.release()


@contextmanager
def _storage_faults_stop_the_study():
    from ..record.states import storage_fault

    try:
        yield
    except Exception as e:  # Tune may wrap what a full disk raised in its callbacks
        fault = None if isinstance(e, (UserError, EnvironmentFault)) else storage_fault(e)
        if fault is None:
            raise
        raise EnvironmentFault("", f"{fault}; the study stopped, fix it and continue with --resume") from None


# -- plan: read the study and the cluster; write nothing --------------------------------------------------


def plan_study(
    spec: Spec, where, address: str | None, resume: bool, dry_run: bool, log=None, accept_spec: bool = False
) -> Plan:
    """What a search of ``spec`` in ``where`` would do: the trials left, and (when some are) the cluster's
    nodes and how many trials run at once. Reads the study's state; writes nothing. A resume with another
    spec, or of a journal corrupt before its last record, is refused here, before Ray starts."""
    from .lock import StudyLock

    if not dry_run:  # a live driver's lock refuses this one first, before Ray starts (taken when opening)
        StudyLock(where).check_free()
    record, rebuild, spec_checked = _read_study(spec, where, resume, dry_run, accept_spec)
    remaining = max(space.trials(spec) - len(record.finished()), 0)
    plan = Plan(where.directory, remaining, [], 0, [], _scheduler_name(spec), storage=where, address=address)
    plan.record, plan.rebuild, plan.spec_checked = record, rebuild, spec_checked
    if remaining and not rebuild:  # a rebuilt summary tells the trials left only once opened
        _start_ray(spec, plan, log)
    return plan


def _read_study(spec: Spec, where, resume: bool, dry_run: bool, accept_spec: bool) -> tuple:
    """The study's record as its storage holds it now, whether it must be rebuilt, and whether the spec
    was checked against ``spec.json``; a resume of no study, a new study over an existing one, another
    spec or a journal corrupt before its last record are refused."""
    from . import specfile
    from .repair import check_journal

    where.pull()
    record, rebuild = _read_record(spec, where, dry_run)
    record.scheduler = _scheduler_name(spec)
    if resume and not _exists(record, rebuild, where):
        raise UserError("--resume", f"no study named {spec.study.name} in {_root(where)}")
    if (record.trials or rebuild) and not resume and not dry_run:
        raise UserError(
            "study.name",
            f"study {spec.study.name!r} already exists in {where.location}; "
            "continue it with --resume, or choose another study.name or --storage",
        )
    # With a driver's lock there, the lock's holder is named first (open_study checks the spec then).
    spec_checked = resume and not (where.directory / LOCK).is_file()
    if spec_checked:
        specfile.check(where.directory, spec, accept=accept_spec)
    check_journal(where.directory / JOURNAL)
    return record, rebuild, spec_checked


def _start_ray(spec: Spec, plan: Plan, log) -> None:
    from .progress import saying

    named = cluster.named_address(plan.address)
    what = f"attaching to Ray at {named}" if named else "starting Ray"
    if log is not None:  # the first line comes before Ray's start-up, the slowest part of the driver's
        log(f"study {spec.study.name}: {what}")
    with saying(log, what):
        _place(spec, plan, plan.address)


def _root(where) -> str:
    """The storage that holds the study (the folder or URI above ``<study.name>``)."""
    location = where.location
    return location.rsplit("/", 1)[0] if "://" not in location else location.split("?")[0].rsplit("/", 1)[0]


def _exists(record: StudyRecord, rebuild: bool, where) -> bool:
    """Whether the study is there to resume: trials, a journal, or a driver starting it (its lock: taking
    the lock then names that driver, which says more than "no study")."""
    directory = where.directory
    return bool(record.trials) or rebuild or (directory / JOURNAL).is_file() or (directory / LOCK).is_file()


def _read_record(spec: Spec, where, dry_run: bool) -> tuple[StudyRecord, bool]:
    """The study's record, and whether it must be rebuilt from the journal (summary.json did not parse)."""
    directory = where.directory
    try:
        return StudyRecord.open(directory, spec), False
    except ValueError as e:  # summary.json does not parse (a disk that filled mid-write, a hand edit)
        if dry_run or not (directory / JOURNAL).is_file():
            raise UserError(
                where.display(SUMMARY),
                f"does not parse ({e}); run without --dry-run to rebuild it from optuna.journal, or "
                "restore it",
            ) from None
    record = StudyRecord(directory, spec.study.name, *_objective(spec))
    record.goals = [(o.metric, o.mode) for o in spec.study.goals]
    record.limits = spec.study.constraint_limits()
    return record, True


def _place(spec: Spec, plan: Plan, address: str | None) -> None:
    """Start or attach Ray; the nodes, whether a trial fits, and how many trials run at once."""
    plan.dashboard_url, plan.ray_started_here = cluster.init_ray(address)
    import ray

    plan.nodes = placement.nodes_from_ray(ray.nodes())
    placement.check_fits(spec.resources, plan.nodes)
    wanted = spec.study.max_concurrent_trials
    auto = placement.max_concurrent(spec.resources, plan.nodes, max(plan.remaining, 1))
    plan.max_concurrent = auto if wanted == "auto" else min(wanted, max(plan.remaining, 1))


# -- open: take the study for writing ------------------------------------------------------------------


def open_study(spec: Spec, plan: Plan, resume: bool, log, accept_spec: bool = False) -> OpenStudy:
    """The study taken for writing: Optuna's journal opened (warm-started when new), the summary rebuilt
    when it did not parse, ``spec.json`` saved, interrupted trials settled, MLflow records an earlier run
    could not send sent; ``plan`` updated with the trials left and those to resume."""
    from . import specfile
    from .optuna_searcher import open_optuna, settle_interrupted
    from .warm import warm_start

    # Read again under the lock: another driver may have run (or begun) the study while this one read it
    # and started Ray; what it wrote must not be overwritten by a stale record.
    plan.record, plan.rebuild, plan.spec_checked = _read_study(spec, plan.storage, resume, False, accept_spec)
    where, record, directory = plan.storage, plan.record, plan.study_dir
    record.on_save = where.push
    if resume and not plan.spec_checked:
        specfile.check(directory, spec, accept=accept_spec)
    optuna_study = open_optuna(directory, spec, log)
    warm_start(optuna_study, spec, log)  # a new study only: earlier trials as the sampler's prior
    if plan.rebuild:
        from .repair import rebuild_summary

        rebuild_summary(record, optuna_study, spec, where)
        record.save()
        log(f"warning: {where.display(SUMMARY)} did not parse; rebuilt it from optuna.journal")
    specfile.save(directory, spec, plan.tracking_uri)
    where.push()
    pending = settle_interrupted(record, optuna_study)
    plan.remaining = max(space.trials(spec) - len(record.finished()), 0)
    plan.resumed = [t.trial_id for t in pending]
    if (directory / PENDING).is_file():
        from ..tracking import tracker as tracking

        tracking.send_pending(where, plan.tracking_uri, plan.remaining > 0, log)
    if plan.remaining == 0:
        return OpenStudy(optuna_study, pending, None)
    if not plan.nodes:  # the summary was rebuilt: trials are left after all
        _start_ray(spec, plan, log)
    if len(plan.nodes) > 1 and not where.remote:
        cluster.check_shared(directory, plan.nodes)  # object storage is shared by definition
    from ..train import download

    download.ensure_local(spec.model.name_or_path, spec.model.revision, log)  # once, where the user sees it
    return OpenStudy(
        optuna_study, pending, _in_background(_open_tracker, spec, plan.tracking_uri, where, log)
    )


# -- execute: run the trials, write the study up --------------------------------------------------------


def execute(spec: Spec, plan: Plan, opened: OpenStudy, log) -> StudyRecord:
    """Run the plan's trials on Tune and the trial pool; then compare them with the base model, write the
    report and close MLflow. Returns the final record."""
    from . import baseline
    from . import pool as pool_module
    from .listener import StudyListener
    from .progress import Progress

    record, where = plan.record, plan.storage
    base, spare = None, placement.spare_cpus(spec.resources, plan.nodes, plan.max_concurrent)
    beside = spare >= baseline.MIN_CPUS
    if baseline.wanted(spec) and not beside:  # no room beside the trials: scored first
        base = baseline.start(spec, plan.study_dir, None, log)
        base.result()
    pool = _pool(spec, plan)
    if baseline.wanted(spec) and beside:  # beside the trials, once the first one trains
        after = pool.first_step.remote(pool_module.ALONE_S)
        base = baseline.start(spec, plan.study_dir, spare, log, after=after)
    if spec.resources.gpu_memory_gb is None:  # else the first trial may be screened out: wait and see
        pool.warm.remote()  # the first workers start while MLflow and Tune get ready
    progress = Progress(spec, record, log)
    progress.begin(plan)
    progress.watch(pool)  # the workers' start-up phases are said while MLflow opens
    _prime_report_once_trained(record, spec.study.num_trials)
    try:
        tracker = _started_tracker(opened.tracker.result(), record)
        listener = StudyListener(where, pool, progress, tracker)
        searcher = _tune(spec, plan, pool, opened.optuna_study, record, opened.pending, listener)
    finally:
        progress.end()
    if searcher.fault:  # what can still be written is; the trials stay unfinished for --resume
        _stop_on_fault(searcher.fault, record, tracker)
    _write_up(plan, record, opened.optuna_study, tracker, _base_result(base, record), log)
    return record


def _base_result(base, record: StudyRecord) -> dict | None:
    """The base model's result for the write-up; an interrupted study does not wait for it (``--resume``
    scores it again, or finds it cached)."""
    if base is None or (record.unfinished() and not base.ready()):
        return None
    return base.result()


def _started_tracker(tracker, record: StudyRecord):
    tracker.start_study(record)
    tracker.end_stale_runs(record)
    return tracker


def _stop_on_fault(fault: str, record: StudyRecord, tracker) -> None:
    _save_what_can_be(record, tracker)
    unfinished = ", ".join(sorted(t.trial_id for t in record.unfinished())) or "none"
    raise EnvironmentFault(
        "", f"{fault}; the study stopped (unfinished: {unfinished}), fix it and continue with --resume"
    )


def _write_up(plan: Plan, record: StudyRecord, optuna_study, tracker, base: dict | None, log) -> None:
    """After the trials: each against the base model, the study's end in MLflow, the report, the summary."""
    if base:
        from . import baseline

        plan.storage.push()  # baseline.json, with the study's state
        tracker.log_baseline(base)
        baseline.compare_trials(record, plan.storage, base)
    tracker.end_study(record)
    _write_report(plan.study_dir, record, optuna_study, tracker)
    from ..record.agreement import warning

    low = warning(list(record.trials.values()), record.mode)  # the report says it too
    if low:
        log(low)
    plan.storage.push(report=True)
    tracker.close()
    record.save()
    plan.runs_link = tracker.runs_link() or f"mlflow ui --backend-store-uri {tracker.uri}"
    # Tune returns early on Ctrl-C: whatever still runs was interrupted, and resumes from its checkpoint.
    plan.unfinished = sorted(t.trial_id for t in record.unfinished())


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


def _prime_report_once_trained(record: StudyRecord, num_trials: int) -> None:
    """Import the report's libraries (and build matplotlib's font cache if this machine has none) in the
    background once a trial has reported, so the study's end does not wait for them and its start does
    not share the CPUs with them; Optuna's importance evaluators only if the study can have enough complete
    trials for them."""
    import threading

    def trained() -> bool:
        try:
            return any(t.steps for t in list(record.trials.values()))
        except RuntimeError:  # the searcher added a trial meanwhile: look again
            return False

    def prime() -> None:
        try:
            while not trained():
                time.sleep(2.0)
            from ..tracking import html_report, report

            report.prime(importances=num_trials >= html_report.IMPORTANCE_MIN_COMPLETE)
        except BaseException:  # a warm-up: a driver exiting under it (a fault, Ctrl-C) loses nothing
            pass

    threading.Thread(target=prime, daemon=True, name="raylora-report").start()


def _import_mlflow() -> None:
    import mlflow  # noqa: F401


def _open_tracker(spec: Spec, tracking_uri: str, where, log: Callable[[str], None]):
    from ..tracking import tracker as tracking

    tracker = tracking.Tracker(spec, tracking_uri, where, log)
    tracker.connect()
    return tracker


def _write_report(directory: Path, record: StudyRecord, optuna_study, tracker) -> None:
    from ..tracking import report

    out = report.write(directory / REPORT_DIR, record, optuna_study)
    tracker.log_report(out)


def _scheduler_name(spec: Spec) -> str:
    from .stopping import scheduler_name

    return scheduler_name(spec, space.largest_max_steps(spec))


def _scheduler(spec: Spec):
    from .stopping import scheduler

    return scheduler(spec, space.largest_max_steps(spec))


def _tune(spec: Spec, plan: Plan, pool, optuna_study, record: StudyRecord, pending, listener):
    import ray.exceptions
    import ray.tune

    from .optuna_searcher import StudySearcher
    from .trainable import run_trial

    searcher = StudySearcher(spec, optuna_study, record, pending, listener)
    tune_dir, filesystem = plan.storage.ray_path(TUNE)
    # Tune's own experiment state is never read back (a study resumes from its journal and summary); on a
    # full or read-only storage its failed saves would print a traceback per attempt over raylora's one line.
    import logging

    logging.getLogger("ray.tune.execution.experiment_state").setLevel(logging.CRITICAL)
    # A trial driver lost with its node or Ray: Tune logs its traceback; the searcher says it in one line.
    for name in ("ray.tune.execution.tune_controller", "ray.tune.tune"):
        logging.getLogger(name).setLevel(logging.CRITICAL)

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

    from .specfile import data_digests

    digests = data_digests(plan.study_dir)
    trainable = ray.tune.with_parameters(run_trial, base_spec=spec.to_dict(), pool=pool, data_sha256=digests)
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
    # Ctrl-C, a fault, or a trial stopped early: its workers stop at their next step, and what they save
    # meanwhile may replace a checkpoint the summary names.
    try:
        ray.get(pool.drain.remote(30.0))
    except ray.exceptions.RayError:  # the pool died for good (its trials are unfinished, for --resume)
        pass
    from .repair import point_at_existing

    point_at_existing(record, spec, plan.storage)
    return searcher


def _pool(spec: Spec, plan: Plan):
    """The study's :class:`~raylora.study.pool.TrialPool` actor, on this node (and so its runners'
    controllers)."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    from .pool import RESTARTS, TrialPool

    resources, objective = spec.resources, spec.study.objective
    runs_dir, filesystem = plan.storage.ray_path(RUNS)
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
        "watchdog_s": environment.watchdog_s(),
        "autoscaler": not plan.ray_started_here,
    }
    here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=True)
    # Calls in flight when the actor dies are retried on its restart (a restarted pool knows no trial:
    # the trial drivers submit theirs again).
    actor = ray.remote(
        num_cpus=0,
        max_concurrency=1000,
        scheduling_strategy=here,
        max_restarts=RESTARTS,
        max_task_retries=-1,
    )(TrialPool)
    return actor.remote(runner, plan.max_concurrent)
