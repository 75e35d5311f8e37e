"""What the user sees during ``raylora search``: one compact line per trial event, not Ray's tables."""

from __future__ import annotations

import time
from collections.abc import Callable

from ..spec import Spec
from .record import StudyRecord, TrialRecord
from .states import TrialState


class Progress:
    """Prints trial starts, evaluations and ends with running / finished / pruned counts and the best."""

    def __init__(self, spec: Spec, record: StudyRecord, log: Callable[[str], None]):
        self.spec, self.record, self.log = spec, record, log
        self.metric = spec.study.objective.metric
        self.start = time.monotonic()

    def begin(self, plan) -> None:
        nodes = len(plan.nodes)
        resumed = f", resuming {', '.join(plan.resumed)}" if plan.resumed else ""
        self.log(
            f"study {self.spec.study.name}: {plan.remaining} trial(s) to run, "
            f"{plan.max_concurrent} at a time "
            f"on {nodes} node(s); scheduler {plan.scheduler}{resumed}"
        )
        local = f" (local copy {plan.study_dir})" if plan.storage.remote else ""
        self.log(f"  storage: {plan.storage.display()}{local}")

    def event(self, kind: str, trial: TrialRecord, result: dict) -> None:
        if kind == "start":
            self._line(f"{trial.trial_id} start  {short_params(trial.params)}")
        elif kind == "result" and trial.value is not None:
            resumed = f"  (resumed from step {trial.resumed_from_step})" if trial.resumed_from_step else ""
            self._line(
                f"{trial.trial_id} step {trial.steps:<4} {self.metric} best {trial.value:.4g}{resumed}"
            )
        elif kind == "end":
            value = f" {self.metric} {trial.value:.4g}" if trial.value is not None else ""
            error = f"  ({trial.error})" if trial.error else ""
            self._line(
                f"{trial.trial_id} {trial.state.lower()} at step {trial.steps}{value}{error}"
                f"  | {self._counts()}"
            )

    def end(self) -> None:
        self._line(f"{'stopped' if self.record.unfinished() else 'done'}  | {self._counts()}")

    def _counts(self) -> str:
        states = [t.state for t in self.record.trials.values()]
        best = self.record.best()
        best_text = f"best {best.trial_id} {best.value:.4g}" if best else "best -"
        S = TrialState
        return (
            f"running {states.count(S.RUNNING)} · complete {states.count(S.COMPLETE)} · "
            f"pruned {states.count(S.PRUNED)} · "
            f"failed {states.count(S.FAILED) + states.count(S.INFEASIBLE)} · "
            f"{best_text}"
        )

    def _line(self, text: str) -> None:
        elapsed = int(time.monotonic() - self.start)
        self.log(f"[{elapsed // 60:02d}:{elapsed % 60:02d}] {text}")


def short_params(params: dict) -> str:
    """``scope=llm+vision r=16 lr.llm=0.0003``: a trial's params, short enough for one line."""
    parts = []
    for path, value in params.items():
        key = path.removeprefix("training.").replace("learning_rate.", "lr.").replace("lora.", "")
        text = (
            "+".join(value)
            if isinstance(value, list)
            else f"{value:.3g}"
            if isinstance(value, float)
            else value
        )
        parts.append(f"{key}={text}")
    return " ".join(parts)
