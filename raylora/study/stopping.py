"""Early stopping: the Tune scheduler a spec asks for, and what a study learns about its own stopping.

- :func:`scheduler` builds what ``study.scheduler`` names: FIFO, Tune's ASHA on one objective
  (:class:`~raylora.study.bounded_asha.BoundedASHA` with ``bound: largest_gain``), or :class:`ParetoASHA`
  (MO-ASHA: promotion by Pareto rank across every objective) on several.
- :func:`grace_steps` resolves ``scheduler.grace_steps`` (default ``training.eval_every``; ``auto``: a
  fraction of ``max_steps``, see :data:`AUTO_GRACE_FRACTION`).
- What a study learns about its own stopping (step–final agreement, hours saved) is
  :mod:`raylora.record.agreement`'s.

The defaults come from ``benchmarks/search_replay.py`` (the study's own sampler and scheduler replayed on
400 public LoRA learning curves); ``benchmarks/RESULTS.md`` gives the numbers.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..spec import Spec

AUTO_GRACE_FRACTION = 0.15
"""``grace_steps: auto`` lets every trial run this fraction of ``max_steps`` before it can be stopped.
Replayed on the 400 public curves (50 seeds, 4 workers), it stopped a top-1% configuration in 8% of the
cases where one was sampled, against 41% for a grace of ``eval_every`` (2% of training there), but needed
0.56 of random search's accelerator-hours to reach its best against 0.38: it is an option, not the
default. ``scheduler.bound: largest_gain`` protects almost as well for less (12% stopped, 0.39 of the
hours; ``benchmarks/RESULTS.md``)."""


def grace_steps(spec: Spec, max_steps: int) -> int:
    """The grace period in steps: the spec's number, or (``auto``) the first evaluation at or after
    :data:`AUTO_GRACE_FRACTION` of ``max_steps``."""
    grace = spec.study.scheduler.grace_steps
    every = spec.training.eval_every
    if grace is None:
        return every
    if grace == "auto":
        wanted = AUTO_GRACE_FRACTION * max_steps
        return max(every, math.ceil(wanted / every) * every)
    return int(grace)


def scheduler_name(spec: Spec, max_steps: int) -> str:
    """``fifo``, ``asha(grace=..., reduction=...)`` or ``pareto-asha(...)``, as ``--dry-run`` prints it."""
    config = spec.study.scheduler
    grace = grace_steps(spec, max_steps)
    if config.type == "fifo" or grace >= max_steps:
        return "fifo"
    kind = "pareto-asha" if len(spec.study.goals) > 1 else "asha"
    bound = ", bound=largest_gain" if config.bound == "largest_gain" else ""
    return f"{kind}(grace={grace}, reduction={config.reduction_factor:g}{bound})"


def scheduler(spec: Spec, max_steps: int):
    """The Tune scheduler for ``study.scheduler`` on trials of up to ``max_steps`` steps."""
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    if scheduler_name(spec, max_steps) == "fifo":
        return FIFOScheduler()
    # max_t below the last step, and no stop at max_t: a trial stopped at its final report keeps its
    # Train placement group on Ray 2.60 and the study hangs. Rungs at earlier steps release fine.
    grace, factor = grace_steps(spec, max_steps), spec.study.scheduler.reduction_factor
    if len(spec.study.goals) > 1:
        goals = [(o.metric, o.mode) for o in spec.study.goals]
        return ParetoASHA(goals, max_t=max_steps - 1, grace_period=grace, reduction_factor=factor)
    objective = spec.study.objective
    rungs = {"metric": objective.metric, "mode": objective.mode, "max_t": max_steps - 1}
    rungs |= {"grace_period": grace, "reduction_factor": factor}
    if spec.study.scheduler.bound == "largest_gain":
        from .bounded_asha import BoundedASHA

        return BoundedASHA(**rungs)
    return ASHAScheduler(time_attr="step", stop_last_trials=False, **rungs)


def milestones(grace: int, max_t: int, factor: float) -> list[float]:
    """The rungs of one ASHA bracket, as Tune's ``_Bracket`` places them (ascending)."""
    count = int(math.log(max_t / grace) / math.log(factor) + 1)
    return [grace * factor**k for k in range(count)]


def pareto_order(points: Sequence[Sequence[float]]) -> list[int]:
    """Indices of ``points`` (every coordinate: lower is better) best first: by non-dominated front,
    then by crowding distance within a front (NSGA-II's selection order), then by the objectives in
    order (the first objective first).

    NSGA-II leaves ties open, and they are common at a rung: a front's two ends both have infinite
    crowding distance, so of two trials that trade one objective for the other, keeping the one recorded
    first would stop every later arrival that does not dominate it. The study's first objective is the
    one its best trial is ranked by, so it breaks the tie."""
    remaining, order = list(range(len(points))), []
    while remaining:
        front = [i for i in remaining if not any(_dominates(points[j], points[i]) for j in remaining)]
        crowding = _crowding([points[i] for i in front])
        ranked = sorted(zip(crowding, front, strict=True), key=lambda ci: (-ci[0], tuple(points[ci[1]])))
        order += [i for _, i in ranked]
        remaining = [i for i in remaining if i not in front]
    return order


def _dominates(a: Sequence[float], b: Sequence[float]) -> bool:
    return all(x <= y for x, y in zip(a, b, strict=True)) and any(x < y for x, y in zip(a, b, strict=True))


def _crowding(front: list[Sequence[float]]) -> list[float]:
    distance = [0.0] * len(front)
    for k in range(len(front[0]) if front else 0):
        order = sorted(range(len(front)), key=lambda i: front[i][k])
        low, high = front[order[0]][k], front[order[-1]][k]
        distance[order[0]] = distance[order[-1]] = math.inf
        for before, i, after in zip(order, order[1:], order[2:], strict=False):
            if high > low:
                distance[i] += (front[after][k] - front[before][k]) / (high - low)
    return distance


def promoted(recorded: Sequence[Sequence[float]], point: Sequence[float], factor: float) -> bool:
    """MO-ASHA's rung decision: ``point`` goes on when it is in the best ``1/factor`` (rounded up) of the
    rung's points, itself included, in :func:`pareto_order`."""
    everyone = [*recorded, point]
    keep = max(1, math.ceil(len(everyone) / factor))
    return len(everyone) - 1 in pareto_order(everyone)[:keep]


class ParetoASHA:
    """Asynchronous successive halving on several objectives (Schmucker et al., MO-ASHA, 2021).

    Same rungs and asynchronous promotion as Tune's ASHA (one bracket, no stop at ``max_t``), but a trial
    at a rung is compared with the trials recorded there by Pareto rank across all ``goals``
    (:func:`promoted`), not by the first objective alone. Implements the part of Tune's
    ``TrialScheduler`` interface that Tune calls.
    """

    CONTINUE, STOP = "CONTINUE", "STOP"  # Tune's TrialScheduler.CONTINUE and .STOP
    supports_buffered_results = True  # a rung is decided once per trial, however results arrive

    def __init__(self, goals: list[tuple[str, str]], max_t: int, grace_period: int, reduction_factor: float):
        self.goals, self.factor = goals, reduction_factor
        self.rungs = [(m, {}) for m in milestones(grace_period, max_t, reduction_factor)]
        self._metric, self._mode = goals[0]
        self._signs = [1.0 if mode == "min" else -1.0 for _, mode in goals]

    @property
    def metric(self) -> str:
        """The metric Tune checks every result for (the first objective)."""
        return self._metric

    def set_search_properties(self, metric, mode, config=None, **spec) -> bool:
        return True

    def on_trial_add(self, tune_controller, trial) -> None:
        pass

    def on_trial_result(self, tune_controller, trial, result: dict) -> str:
        if "step" not in result or any(m not in result for m, _ in self.goals):
            return self.CONTINUE
        point = [s * float(result[m]) for s, (m, _) in zip(self._signs, self.goals, strict=True)]
        for milestone, recorded in reversed(self.rungs):
            if result["step"] < milestone or trial.trial_id in recorded:
                continue
            go_on = promoted(list(recorded.values()), point, self.factor)
            recorded[trial.trial_id] = point
            return self.CONTINUE if go_on else self.STOP
        return self.CONTINUE

    def on_trial_complete(self, tune_controller, trial, result: dict) -> None:
        pass

    def on_trial_error(self, tune_controller, trial) -> None:
        pass

    def on_trial_remove(self, tune_controller, trial) -> None:
        pass

    def choose_trial_to_run(self, tune_controller):
        from ray.tune.schedulers import FIFOScheduler

        return FIFOScheduler.choose_trial_to_run(self, tune_controller)

    def debug_string(self) -> str:
        return f"ParetoASHA: rungs at {[m for m, _ in self.rungs]}"

    def save(self, checkpoint_path: str) -> None:
        pass

    def restore(self, checkpoint_path: str) -> None:
        pass
