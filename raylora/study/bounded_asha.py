"""ASHA that stops a trial only when it could not still win: Tune's ASHA plus the report's own bound.

At a rung, Tune's ASHA stops a trial in the worse part of the rung. :class:`BoundedASHA` lets that stop
stand only if the trial could not still reach the best value seen, even after the largest improvement
any finished trial made after the same step (:func:`raylora.record.agreement.could_still_win`, the
rule the report applies to stopped trials afterwards). Until a finished trial tells how much a trial
can still gain after that step, ASHA's decision stands.

The bound is empirical: it holds for the curves the study has seen, not for the one it is judging.
"""

from __future__ import annotations

from ray.tune.schedulers import ASHAScheduler

from ..record.agreement import could_still_win


class BoundedASHA(ASHAScheduler):
    """Tune's ``ASHAScheduler`` (one bracket, no stop at ``max_t``) whose stops must also pass the bound.

    A trial counts as finished once it reports a step at or beyond ``max_t`` (Tune also calls
    ``on_trial_complete`` for the trials it stops, so that call cannot tell); with ``training.max_steps``
    searched, only trials of the largest count do. The best value is the best any finished trial reached.
    """

    def __init__(self, *, metric: str, mode: str, max_t: int, grace_period: int, reduction_factor: float):
        super().__init__(
            time_attr="step",
            metric=metric,
            mode=mode,
            max_t=max_t,
            grace_period=grace_period,
            reduction_factor=reduction_factor,
            stop_last_trials=False,
        )
        self._sign = 1.0 if mode == "min" else -1.0
        self._curves: dict[str, dict[int, float]] = {}
        self._finished: set[str] = set()

    def on_trial_result(self, tune_controller, trial, result: dict) -> str:
        action = super().on_trial_result(tune_controller, trial, result)
        point = self._record(trial.trial_id, result)
        if action == self.STOP and point is not None and self._could_still_win(*point):
            self._num_stopped -= 1
            return self.CONTINUE
        return action

    def on_trial_complete(self, tune_controller, trial, result: dict) -> None:
        self._record(trial.trial_id, result)
        super().on_trial_complete(tune_controller, trial, result)

    def _record(self, trial_id: str, result: dict) -> tuple[int, float] | None:
        if "step" not in result or self._metric not in result:
            return None
        step, value = int(result["step"]), self._sign * float(result[self._metric])
        self._curves.setdefault(trial_id, {})[step] = value
        if step >= self._max_t:
            self._finished.add(trial_id)
        return step, value

    def _could_still_win(self, step: int, value: float) -> bool:
        finished = [self._curves[t] for t in self._finished]
        if not finished:
            return False
        best = min(min(c.values()) for c in finished)
        return could_still_win(value, step, finished, best) is True

    def debug_string(self) -> str:
        return "Bounded" + super().debug_string()
