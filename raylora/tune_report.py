"""Forwarding a trial's Ray Train reports to its Tune trial driver, dropping them once it was stopped."""

from __future__ import annotations

import ray
from ray.tune.integration.ray_train import CHECKPOINT_PATH_KEY, TuneReportCallback
from ray.util.queue import Full


class StoppableTuneReport(TuneReportCallback):
    """Ray's ``TuneReportCallback``, except that the reports of a stopped trial are dropped.

    Ray's callback waits forever for the trial driver to take each report. Trial drivers are reused, so
    after the scheduler stopped a trial its driver no longer takes them and the Train run would never
    end; here a report that waits is dropped as soon as the trial is on the :class:`StopBoard`.
    """

    def __init__(self, board, trial_id: str):
        super().__init__()
        self.board, self.trial_id = board, trial_id

    def after_report(self, run_context, metrics, checkpoint) -> None:
        item = metrics[0].copy()  # rank 0's, as Ray's callback does
        if checkpoint:
            item[CHECKPOINT_PATH_KEY] = checkpoint.path
        while True:
            try:
                self._training_actor_item_queue.put(item, timeout=1.0)
                return
            except Full:
                if ray.get(self.board.is_stopped.remote(self.trial_id)):
                    return
