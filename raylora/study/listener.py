"""What happens to a study's trials, told as it happens: one named method per event.

The searcher (:class:`~raylora.study.optuna_searcher.StudySearcher`) is the one source of trial events; the
driver hands it a :class:`StudyListener` that passes each one on to whoever acts on it: the trial pool
(warm workers, stop a pruned trial's), the progress lines, and MLflow.
"""

from __future__ import annotations

from ..record.states import TrialState
from ..record.trials import TrialRecord


class TrialListener:
    """The events of a trial's life, in order; every method does nothing unless overridden."""

    def started(self, trial: TrialRecord) -> None:
        """The searcher sampled the trial (or took up a resumed one) and recorded it RUNNING."""

    def launched(self, trial: TrialRecord) -> None:
        """The trial passed the memory pre-screen and Tune starts its driver."""

    def reported(self, trial: TrialRecord, result: dict) -> None:
        """The trial reported an evaluation the searcher kept (``trial`` already updated)."""

    def ended(self, trial: TrialRecord, result: dict) -> None:
        """The trial reached its final state (COMPLETE, PRUNED, INFEASIBLE or FAILED)."""


class StudyListener(TrialListener):
    """The driver's listener: the pool, the user's view and MLflow, in that order for each event."""

    def __init__(self, storage, pool, progress: TrialListener, tracker):
        self.storage, self.pool, self.progress, self.tracker = storage, pool, progress, tracker

    def started(self, trial: TrialRecord) -> None:
        self._locate(trial, {})
        self.progress.started(trial)
        self.tracker.trial_started(trial)

    def launched(self, trial: TrialRecord) -> None:
        self.pool.warm.remote()  # workers start while Tune starts the trial's driver

    def reported(self, trial: TrialRecord, result: dict) -> None:
        self._locate(trial, result)
        self.progress.reported(trial, result)
        self.tracker.trial_result(trial, result)

    def ended(self, trial: TrialRecord, result: dict) -> None:
        if trial.state == TrialState.PRUNED:
            self.pool.stop.remote(trial.trial_id)  # its workers end it at their next step, take the next
        self._locate(trial, result)
        self.progress.ended(trial, result)
        self.tracker.trial_ended(trial)

    def _locate(self, trial: TrialRecord, result: dict) -> None:
        # Ray reports checkpoints as paths on the storage's filesystem; URI storage names them s3://...
        if result.get("checkpoint_path"):
            result["checkpoint_path"] = self.storage.uri(result["checkpoint_path"])
        if trial.adapter_path:
            trial.adapter_path = self.storage.uri(trial.adapter_path)
