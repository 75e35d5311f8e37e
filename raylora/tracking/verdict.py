"""The verdict at the top of the study report: the study's questions answered in sentences with numbers.

    scope          LLM-only against +vision against +vision+projector: the best of each, the difference
                   with a 95% interval, the cost ratio of the two best trials
    quantization   nf4 against full precision: quality lost, memory saved
    settings       the best rank and learning rates of each scope
    unknowns       what the data cannot tell yet: too few trials of a group, intervals that include 0

Pure: it reads the trials as ``summary.json`` holds them (COMPLETE trials compete; a trial's ``value`` is
its best objective value, ``cost`` its ``cost/*`` metrics). The intervals are across trials — the spread
of a group's complete trials, whose hyperparameters differ (Welch's t on the group means) — not eval-item
noise. The paired test on the same eval items is McNemar's (:func:`raylora.record.comparison.compare`): the
best trial against the base model (each trial's ``vs_base``), and the best of one group against the best
of another when their per-record final evaluations (``items``: trial id → ``eval_items.json``) are given.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from ..record import agreement
from ..record.states import TrialState
from ..train import cost

SCOPE = "training.lora.scope"
QUANTIZATION = "training.quantization"
# Scope families by the parts they train, in the order the note asks about them.
FAMILIES = {
    frozenset({"llm"}): "LLM-only",
    frozenset({"llm", "vision"}): "+vision",
    frozenset({"llm", "vision", "projector"}): "+vision+projector",
}
FULL_PRECISION = "none"


@dataclass(frozen=True)
class Group:
    """The complete trials of one value of a compared parameter (a scope family, a quantization)."""

    label: str
    trials: tuple  # TrialRecords, best first
    mode: str

    @property
    def best(self):
        return self.trials[0]

    @property
    def values(self) -> list[float]:
        return [t.value for t in self.trials]

    def mean_interval(self) -> tuple[float, float, float] | None:
        """(mean, low, high): a 95% t-interval of the group's values; None with fewer than 2 trials."""
        n = len(self.trials)
        if n < 2:
            return None
        mean, sd = statistics.fmean(self.values), statistics.stdev(self.values)
        half = _t95(n - 1) * sd / math.sqrt(n)
        return mean, mean - half, mean + half


def scope_family(trial) -> str | None:
    """LLM-only, +vision, +vision+projector (or the scope words joined) of a trial's searched scope."""
    scope = trial.params.get(SCOPE)
    if not isinstance(scope, list):
        return None
    parts = frozenset(word.split(".")[0].replace("deepstack", "projector") for word in scope)
    return FAMILIES.get(parts, "+".join(scope))


def quantization(trial) -> str | None:
    value = trial.params.get(QUANTIZATION)
    return None if value is None else ("full precision" if value == FULL_PRECISION else str(value))


def groups(trials: Sequence, key: Callable, mode: str) -> list[Group]:
    """The complete trials grouped by ``key(trial)`` (None: not searched), best first in each group."""
    sign = 1 if mode == "min" else -1
    complete = [t for t in trials if t.state == TrialState.COMPLETE and t.value is not None]
    labels: dict[str, list] = {}
    for t in complete:
        label = key(t)
        if label is not None:
            labels.setdefault(label, []).append(t)
    order = list(FAMILIES.values()) + ["full precision"]
    ranked = sorted(labels, key=lambda k: (order.index(k) if k in order else len(order), k))
    return [Group(k, tuple(sorted(labels[k], key=lambda t: sign * t.value)), mode) for k in ranked]


def welch(a: Group, b: Group) -> tuple[float, float, float] | None:
    """(difference of means b − a, low, high): Welch's 95% interval; None unless both have 2+ trials."""
    if len(a.trials) < 2 or len(b.trials) < 2:
        return None
    va, vb = statistics.variance(a.values) / len(a.trials), statistics.variance(b.values) / len(b.trials)
    diff = statistics.fmean(b.values) - statistics.fmean(a.values)
    se = math.sqrt(va + vb)
    if se == 0:
        return diff, diff, diff
    dof = (va + vb) ** 2 / (va**2 / (len(a.trials) - 1) + vb**2 / (len(b.trials) - 1))
    half = _t95(dof) * se
    return diff, diff - half, diff + half


# Student's t 97.5% quantiles for 1..30 degrees of freedom (two-sided 95%); scipy.stats takes seconds to
# import, and a fractional Welch dof rounds down (the wider interval).
_T975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145,
         2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048,
         2.045, 2.042)  # fmt: skip


def _t95(dof: float) -> float:
    if dof < 31:
        return _T975[max(1, int(dof + 1e-9)) - 1]
    z = 1.959963984540054  # beyond 30: the Cornish-Fisher series, within 1e-4
    return z + (z**3 + z) / (4 * dof) + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * dof**2)


def verdict(trials: Sequence, metric: str, mode: str, items: dict | None = None) -> list[str]:
    """The verdict's sentences, in the order a reader asks; ``items`` (trial id → per-record outcomes)
    pairs the group bests on the same eval records."""
    lines: list[str] = []
    unknowns: list[str] = []
    paired: list[str] = []  # the comparisons that got a paired test
    complete = [t for t in trials if t.state == TrialState.COMPLETE and t.value is not None]
    if not complete:
        return [f"No trial has completed yet: nothing can be said about {metric}."]
    lines += _against_base(complete, mode)
    by_scope = groups(trials, scope_family, mode)
    lines += _comparison("scope", by_scope, metric, mode, unknowns, items or {}, paired)
    by_quant = groups(trials, quantization, mode)
    lines += _comparison("quantization", by_quant, metric, mode, unknowns, items or {}, paired)
    lines += _settings(by_scope or [Group("all trials", tuple(complete), mode)], metric)
    if len(complete) < 2 * max(1, len(by_scope)):
        unknowns.append(f"only {len(complete)} complete trial(s) in all")
    if len(by_scope) > 1 or len(by_quant) > 1:
        if not paired:
            unknowns.append(
                "no paired test between the group bests on the same eval items (their final evaluations, "
                "eval_items.json, are not here; the intervals above are across trials with different "
                "hyperparameters)"
            )
    lines += agreement.sentences(trials, mode)
    lines.append("What the data cannot tell yet: " + "; ".join(unknowns) + ".")
    return lines


def _against_base(complete: list, mode: str) -> list[str]:
    """Did fine-tuning help at all: the best trial against the base model on the same eval records."""
    best = (min if mode == "min" else max)(complete, key=lambda t: t.value)
    vs = getattr(best, "vs_base", None)
    if not vs:
        return []
    significant = "significant" if vs["p_value"] < 0.05 else "not significant"
    return [
        f"Against the base model: the best trial {best.trial_id} scores {vs['metric']} = {vs['trial']:.3g}, "
        f"the base model {vs['base']:.3g} on the same {vs['n']} eval records ({100 * vs['gain']:+.1f} "
        f"points; McNemar p = {vs['p_value']:.2g}, {significant} at 5%)."
    ]


def _comparison(
    what: str, found: list[Group], metric: str, mode: str, unknowns: list[str], items: dict, paired: list
) -> list[str]:
    if not found:
        return []
    if len(found) == 1:
        g = found[0]
        unknowns.append(f"{what} was not compared (every complete trial is {g.label})")
        return []
    lines = ["Best of each " + what + ": " + "; ".join(_best_text(g, metric) for g in found) + "."]
    base = found[0]
    for other in found[1:]:
        lines.append(
            _difference(base, other, metric, mode, unknowns, _paired(base, other, metric, items, paired))
        )
    for g in found:
        if len(g.trials) < 2:
            unknowns.append(f"{g.label} has {len(g.trials)} complete trial(s), too few for an interval")
    return lines


def _best_text(g: Group, metric: str) -> str:
    memory = g.best.cost.get(cost.PEAK_MEM_GB)
    at = f", {memory:.3g} GB peak" if memory is not None else ""
    return f"{g.label} {g.best.value:.4g} ({g.best.trial_id}{at}; {len(g.trials)} complete)"


def _paired(base: Group, other: Group, metric: str, items: dict, paired: list) -> str:
    """The two bests on the same eval records: the accuracy of each, and McNemar's p ("" without both)."""
    from ..record.comparison import compare, metric_for

    a, b = items.get(other.best.trial_id), items.get(base.best.trial_id)
    accuracy = metric_for(metric)
    result = compare(b, a, accuracy) if a and b else None
    if result is None:
        return ""
    paired.append(other.label)
    return (
        f"; paired on the same {result['n']} eval records, {accuracy} {result['trial']:.3g} against "
        f"{result['base']:.3g} ({100 * result['gain']:+.1f} points, McNemar p = {result['p_value']:.2g})"
    )


def _difference(
    base: Group, other: Group, metric: str, mode: str, unknowns: list[str], paired: str = ""
) -> str:
    diff = other.best.value - base.best.value
    better = (diff < 0) == (mode == "min") and diff != 0
    word = "better" if better else ("worse" if diff else "no different")
    text = f"{other.label} against {base.label}: best {metric} {diff:+.4g} ({word})"
    interval = welch(base, other)
    if interval is not None:
        mean, low, high = interval
        text += f"; group means differ by {mean:+.4g}, 95% interval [{low:+.4g}, {high:+.4g}]"
        if low <= 0 <= high:
            unknowns.append(f"whether {other.label} beats {base.label} (the interval includes 0)")
    text += paired
    ratios = []
    for name, unit in ((cost.PEAK_MEM_GB, "memory"), (cost.ACCELERATOR_HOURS, "accelerator-hours")):
        a, b = base.best.cost.get(name), other.best.cost.get(name)
        if a and b is not None:
            ratios.append(f"{b / a:.2f}× the {unit}")
    if ratios:
        text += "; for " + " and ".join(ratios)
        memory = (base.best.cost.get(cost.PEAK_MEM_GB), other.best.cost.get(cost.PEAK_MEM_GB))
        if other.label != "full precision" and base.label == "full precision" and all(memory):
            text += f" ({1 - memory[1] / memory[0]:.0%} memory saved)"
    return text + "."


def _settings(found: list[Group], metric: str) -> list[str]:
    parts = []
    for g in found:
        params = g.best.params
        bits = []
        if "training.lora.r" in params:
            bits.append(f"r={params['training.lora.r']}")
        bits += [
            f"lr {path.rsplit('.', 1)[1]} {value:.2g}"
            for path, value in sorted(params.items())
            if path.startswith("training.learning_rate.") and isinstance(value, (int, float))
        ]
        if bits:
            parts.append(f"{g.label}: {', '.join(bits)} ({g.best.trial_id})")
    return ["Best settings by scope: " + "; ".join(parts) + "."] if parts else []
