"""Several objectives and constraints: what a finished trial tells Optuna, and the Pareto front.

A trial's objective values (``TrialRecord.values``) are taken where its first objective was best — the
step whose checkpoint is the trial's adapter — except ``cost/*`` metrics, which are the trial's final
cost (peak memory and accelerator-hours only grow). ``study.constraints`` become Optuna constraints
(``Trial.set_constraint``: the amount by which the limit is exceeded, <= 0 when met), so the sampler
learns the infeasible region; a trial that breaks one stays COMPLETE but is never on the front.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from .states import TrialState

if TYPE_CHECKING:
    from ..spec import Spec

TrialRecord = Any  # raylora.record.trials.TrialRecord (imported by record: no import back)


def metrics(spec: Spec) -> list[str]:
    """Every metric a trial's values hold: the objectives, then the constrained metrics."""
    goals = [o.metric for o in spec.study.goals]
    return goals + [m for m in spec.study.constraints if m not in goals]


def at_best_step(spec: Spec, trial: TrialRecord, result: dict) -> None:
    """Keep the reported values of this (new best) step."""
    trial.values.update(
        {m: float(result[m]) for m in metrics(spec) if not m.startswith("cost/") and m in result}
    )


def tell_complete(study, ot_trial, spec: Spec, trial: TrialRecord) -> TrialState:
    """Tell Optuna a trial that trained to the end: its values and constraints (FAIL when an objective
    was never reported); return the trial's state."""
    import optuna

    first = spec.study.goals[0].metric
    values = {**trial.values, first: trial.value}
    values.update({m: trial.cost[m] for m in metrics(spec) if m.startswith("cost/") and m in trial.cost})
    trial.values = {m: values[m] for m in metrics(spec) if values.get(m) is not None}
    missing = [o.metric for o in spec.study.goals if o.metric not in trial.values]
    if missing:
        trial.error = f"the objective {missing[0]} was never reported"
        ot_trial.set_user_attr("error", trial.error)
        study.tell(ot_trial, state=optuna.trial.TrialState.FAIL)
        return TrialState.FAILED
    for metric, excess in violations(spec, trial.values).items():
        ot_trial.set_constraint(metric, excess)
    told = [trial.values[o.metric] for o in spec.study.goals]
    study.tell(ot_trial, told if len(told) > 1 else told[0])
    return TrialState.COMPLETE


def violations(spec: Spec, values: dict) -> dict[str, float]:
    """By how much each constraint is exceeded (<= 0: met); a metric never reported counts as broken."""
    out = {}
    for metric, (op, limit) in spec.study.constraint_limits().items():
        value = values.get(metric)
        if value is None:
            out[metric] = 1.0
        else:
            out[metric] = value - limit if op == "<=" else limit - value
    return out


def pareto_front(
    trials: Sequence[TrialRecord], goals: Sequence[tuple[str, str]], limits: dict[str, tuple[str, float]]
) -> list[str]:
    """Ids of the COMPLETE trials that meet every constraint and that no other such trial dominates."""
    signs = [(metric, 1.0 if mode == "min" else -1.0) for metric, mode in goals]

    def feasible(t) -> bool:
        for metric, (op, limit) in limits.items():
            value = t.values.get(metric)
            if value is None or (value > limit if op == "<=" else value < limit):
                return False
        return True

    candidates = [
        t
        for t in trials
        if t.state == TrialState.COMPLETE and all(m in t.values for m, _ in signs) and feasible(t)
    ]
    points = {t.trial_id: [s * t.values[m] for m, s in signs] for t in candidates}

    def dominates(a: list[float], b: list[float]) -> bool:
        pairs = list(zip(a, b, strict=True))
        return all(x <= y for x, y in pairs) and any(x < y for x, y in pairs)

    front = [i for i, p in points.items() if not any(dominates(q, p) for q in points.values())]
    return sorted(front)
