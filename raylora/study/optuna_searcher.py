"""Everything Optuna: the study's journal, its sampler, and the Tune searcher that asks and tells it.

This module is the one place a trial's state changes: :class:`StudySearcher` moves each trial from RUNNING
to its final :class:`~raylora.record.states.TrialState` as Tune reports it, and
:func:`settle_interrupted` settles what a killed driver left behind.

Ray's own ``OptunaSearch`` tells an ASHA-stopped trial to Optuna as COMPLETE with its low-budget value
and an out-of-memory trial as FAIL (which samplers ignore). Here an early-stopped trial is PRUNED with its
intermediate values, an OOM trial is marked infeasible with ``Trial.set_constraint`` (so TPE learns to
avoid that region), and every other crash is FAIL with its reason. Trials get deterministic slot ids
(``t000``, ``t001``, ...) that name their checkpoint folders, so an interrupted trial resumes from its
checkpoint.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from contextlib import contextmanager
from typing import TYPE_CHECKING

from ray.tune.search import Searcher

from ..layout import JOURNAL
from ..record import objectives
from ..record.states import ERROR, NOT_A_VERDICT, STATUS, TrialState, from_optuna, storage_fault
from ..record.trials import StudyRecord, TrialRecord, finite, slot_name
from ..spec import space
from . import warm
from .listener import TrialListener

if TYPE_CHECKING:
    from pathlib import Path

    import optuna

    from ..spec import Spec


class StudySearcher(Searcher):
    """Asks Optuna for each new trial; tells it COMPLETE, PRUNED, infeasible or FAIL at the end."""

    def __init__(
        self,
        spec: Spec,
        study: optuna.Study,
        record: StudyRecord,
        pending: list[TrialRecord],
        listener: TrialListener | None = None,
    ):
        objective = spec.study.objective
        super().__init__(metric=objective.metric, mode=objective.mode)
        self.spec = spec
        self.study = study
        self.record = record
        self.pending = list(pending)
        self.listener = listener or TrialListener()
        self._sample = space.define_by_run(spec)
        self._trials: dict[str, tuple[optuna.Trial, TrialRecord]] = {}
        self._next_slot = len(record.trials)
        self.fault: str | None = None  # a storage fault stopped the study (see on_trial_complete)
        self._diverged: dict[str, str] = {}  # slot -> why its objective is not a number

    def suggest(self, trial_id: str) -> dict | None:
        if self.fault:
            return Searcher.FINISHED
        if self.pending:
            resumed = self.pending.pop(0)
            self.study.enqueue_trial(_encoded(self.study, resumed), skip_if_exists=False)
            slot = resumed.trial_id
        else:
            slot = slot_name(self._next_slot)
            self._next_slot += 1
            warm.enqueue_next(self.study, self.spec)  # study.enqueue's configurations come first
        ot_trial = self.study.ask()
        self._sample(ot_trial)
        ot_trial.set_user_attr("slot", slot)
        params = space.decode(self.spec, ot_trial.params)
        trial = self.record.trials.get(slot) or TrialRecord(slot)
        trial.state, trial.params, trial.error = TrialState.RUNNING, params, None
        trial.optuna_number = ot_trial.number
        trial.restart()
        self.record.trials[slot] = trial
        self.record.save()
        self._trials[trial_id] = (ot_trial, trial)
        self.listener.started(trial)
        config = {"slot": slot, "params": params}
        too_big = self._prescreen(params)
        if too_big:
            config["prescreened"] = too_big
        else:
            self.listener.launched(trial)
        return config

    def _prescreen(self, params: dict) -> str | None:
        """Why a sampled trial cannot fit ``resources.gpu_memory_gb`` (None when it fits or is unchecked)."""
        budget = self.spec.resources.gpu_memory_gb
        if budget is None:
            return None
        from ..train import estimate

        predicted = estimate.estimate(self.spec.with_values(params))
        if estimate.fits(predicted, budget):
            return None
        return (
            f"out of memory (predicted): {predicted.total_bytes / estimate.GIB:.1f} GiB estimated peak > "
            f"90% of resources.gpu_memory_gb={budget:g}; not launched"
        )

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        with self._storage_guard():
            ot_trial, trial = self._trials[trial_id]
            if self._absorb(ot_trial, trial, result):
                self.listener.reported(trial, result)
                self.record.save()

    @contextmanager
    def _storage_guard(self):
        """A full, read-only or unwritable storage under the journal or the summary stops the study (the
        driver reports it); any other error is Tune's to report."""
        try:
            yield
        except OSError as e:
            fault = storage_fault(e, str(self.record.directory))
            if fault is None:
                raise
            self.fault = self.fault or fault

    def _absorb(self, ot_trial, trial: TrialRecord, result: dict) -> bool:
        """Take a training report into the trial's record and Optuna; False if it holds no step."""
        if "step" not in result or STATUS in result:
            return False
        step = int(result["step"])
        if step <= trial.steps and trial.value is not None:
            return False  # already seen (a stopping result arrives again at completion)
        trial.steps = step
        if result.get("resumed_from_step"):
            trial.resumed_from_step = int(result["resumed_from_step"])
        trial.nodes = list(result.get("nodes", trial.nodes))
        trial.cost.update({k: float(v) for k, v in result.items() if k.startswith("cost/")})
        value = result.get(self.metric)
        if value is None:
            return True
        if not finite(value):  # a diverged trial: FAILED at its end, never a value (see _complete)
            self._diverged.setdefault(
                trial.trial_id, f"the objective {self.metric} became {value} at step {step}"
            )
            return True
        if len(self.study.directions) == 1:  # Optuna keeps no intermediate values of several objectives
            ot_trial.report(float(value), step)
        trial.last_value = float(value)
        trial.curve[str(step)] = float(value)
        # On a tie the newer checkpoint is the one Ray keeps (a trial resumed at its last step reports
        # the same value again, and Ray deletes the older copy).
        if self.record.better(value, trial.value) or value == trial.value:
            trial.value = float(value)
            objectives.at_best_step(self.spec, trial, result)
            if result.get("checkpoint_path"):
                trial.adapter_path = f"{result['checkpoint_path']}/adapter"
        return True

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        with self._storage_guard():
            self._complete(trial_id, result, error)

    def _complete(self, trial_id: str, result: dict | None, error: bool) -> None:
        import optuna

        ot_trial, trial = self._trials.pop(trial_id)
        result = result or {}
        if self._absorb(ot_trial, trial, result):
            self.listener.reported(trial, result)
        status = result.get(STATUS)
        if trial.trial_id in self._diverged and status != TrialState.FAILED:
            status, result = TrialState.FAILED, {**result, ERROR: self._diverged.pop(trial.trial_id)}
        complete = trial.steps >= space.trial_max_steps(self.spec, trial.params) and trial.value is not None
        if status in NOT_A_VERDICT or (error and status is None) or (self.fault and not complete):
            # Not the trial's verdict (its storage, node or pool failed, or Tune lost the trial's driver,
            # which reports every error of the trial's own): Optuna is not told, and the trial resumes from
            # its checkpoint once the study is resumed.
            self.fault = self.fault or result.get(ERROR) or "the trial's driver died (its node or Ray)"
            trial.error = result.get(ERROR) or trial.error
            self.record.save()
            return
        if status == TrialState.INFEASIBLE:
            ot_trial.set_constraint("out_of_memory", 1.0)
            self.study.tell(ot_trial, state=optuna.trial.TrialState.PRUNED)
            trial.state, trial.error, trial.value = TrialState.INFEASIBLE, result.get(ERROR), None
        elif status == TrialState.FAILED:
            ot_trial.set_user_attr("error", result.get(ERROR) or "the trial driver crashed")
            self.study.tell(ot_trial, state=optuna.trial.TrialState.FAIL)
            trial.state, trial.error, trial.value = (
                TrialState.FAILED,
                result.get(ERROR) or "the trial driver crashed",
                None,
            )
        elif complete:
            ot_trial.set_constraint("out_of_memory", 0.0)
            trial.state = objectives.tell_complete(self.study, ot_trial, self.spec, trial)
        elif trial.value is None:
            message = f"the objective {self.metric} was never reported"
            ot_trial.set_user_attr("error", message)
            self.study.tell(ot_trial, state=optuna.trial.TrialState.FAIL)
            trial.state, trial.error = TrialState.FAILED, message
        else:
            ot_trial.set_constraint("out_of_memory", 0.0)
            self.study.tell(ot_trial, state=optuna.trial.TrialState.PRUNED)
            trial.state = TrialState.PRUNED
            trial.value = trial.last_value
        self.listener.ended(trial, result)
        self.record.save()


def _encoded(study: optuna.Study, trial: TrialRecord) -> dict:
    """The Optuna-stored params of a trial to run again (its interrupted attempt was failed on resume)."""
    for frozen in study.get_trials(deepcopy=False):
        if frozen.number == trial.optuna_number:
            return dict(frozen.params)
    return {}


def settle_interrupted(record: StudyRecord, optuna_study: optuna.Study) -> list[TrialRecord]:
    """Settle what a crash left behind; return the unfinished slots to run again.

    Optuna is told first when a trial ends, then ``summary.json`` is saved: a trial Optuna already
    finished is finished in the summary too (not run a second time), and Optuna trials still RUNNING fail.
    """
    import optuna

    TS = optuna.trial.TrialState
    told = {t.number: t for t in optuna_study.get_trials(deepcopy=False) if t.state != TS.RUNNING}
    settled = [t for t in record.unfinished() if t.optuna_number in told]
    for trial in settled:
        from_optuna(trial, told[trial.optuna_number], record.goals)
    if settled:
        record.save()
    for frozen in optuna_study.get_trials(deepcopy=False, states=(TS.RUNNING,)):
        optuna_study.tell(frozen.number, state=TS.FAIL)
    return sorted(record.unfinished(), key=lambda t: t.trial_id)


def open_optuna(directory: Path, spec: Spec, log: Callable[[str], None] = print) -> optuna.Study:
    """The study's Optuna study in a journal file (safe on NFS, unlike SQLite), created if missing; a torn
    last record is dropped first (:func:`raylora.study.repair.repair_journal`)."""
    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    from .repair import repair_journal

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    directory.mkdir(parents=True, exist_ok=True)
    repair_journal(directory / JOURNAL, log)
    storage = JournalStorage(JournalFileBackend(str(directory / JOURNAL)))
    directions = ["minimize" if o.mode == "min" else "maximize" for o in spec.study.goals]
    study = optuna.create_study(
        storage=storage, study_name=spec.study.name, directions=directions, load_if_exists=True
    )
    # A resumed study must not replay the random start-up samples it already ran.
    study.sampler = _sampler(spec, seed=spec.study.sampler.seed + len(study.get_trials(deepcopy=False)))
    return study


def _every_configuration_once(seed: int):
    """Optuna's brute-force sampler for a space smaller than the study: each configuration once, the
    running ones included. Its own end-of-space ``study.stop()`` is for ``optimize`` loops, which this
    study has none of (the study stops at the space's size: :func:`raylora.spec.space.trials`)."""
    import optuna

    class EveryConfigurationOnce(optuna.samplers.BruteForceSampler):
        def after_trial(self, study, trial, state, values) -> None:
            pass

    with warnings.catch_warnings():  # "experimental" is Optuna's label, nothing a user can act on
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return EveryConfigurationOnce(seed=seed)


def _sampler(spec: Spec, seed: int):
    import optuna

    if space.size(spec) is not None and space.size(spec) < spec.study.num_trials:
        return _every_configuration_once(seed)

    if spec.study.sampler.type == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if spec.study.sampler.type == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=seed)
    with warnings.catch_warnings():
        # multivariate + group is what makes TPE model conditional spaces; its "experimental" label
        # is Optuna's, not something a user can act on.
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return optuna.samplers.TPESampler(multivariate=True, group=True, constant_liar=True, seed=seed)
