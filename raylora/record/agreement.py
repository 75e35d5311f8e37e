"""What a study learns about its own early stopping, from its trials alone (pure Python).

:func:`agreement` is the Spearman correlation between the values finished trials had at each step and their
final values; :func:`stopping_summary` adds what stopping saved and whether a stopped trial could still have
beaten the winner. ``summary.json``, the verdict and the report carry them; :func:`warning` is the line the
driver prints when stopping at the first rung is guesswork.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

LOW_AGREEMENT = 0.5
"""Below this Spearman correlation at the first rung, the report warns that stopping there is guesswork."""

SHOWN_STEPS = 5
"""The verdict names the agreement at this many steps at most (the first ones and the last); the report's
table has every step."""


def spearman(xs: Sequence[float], ys: Sequence[float]) -> float | None:
    """Spearman's rank correlation (ties get their mean rank); None under 3 pairs or for a constant."""
    if len(xs) < 3:
        return None
    rx, ry = _ranks(xs), _ranks(ys)
    mx, my = sum(rx) / len(rx), sum(ry) / len(ry)
    sxy = sum((a - mx) * (b - my) for a, b in zip(rx, ry, strict=True))
    sxx, syy = sum((a - mx) ** 2 for a in rx), sum((b - my) ** 2 for b in ry)
    return None if sxx == 0 or syy == 0 else sxy / math.sqrt(sxx * syy)


def _ranks(values: Sequence[float]) -> list[float]:
    order = sorted(range(len(values)), key=lambda i: values[i])
    ranks = [0.0] * len(values)
    start = 0
    while start < len(order):
        end = start
        while end + 1 < len(order) and values[order[end + 1]] == values[order[start]]:
            end += 1
        for k in range(start, end + 1):
            ranks[order[k]] = (start + end) / 2 + 1
        start = end + 1
    return ranks


def agreement(curves: dict[str, dict[int, float]], finals: dict[str, float]) -> dict[int, float]:
    """``{step: Spearman}`` between the values trials had at each step and their final values, over the
    trials with a final value that evaluated at that step and again after it (at least 3). A trial's
    last evaluation is left out: it would be compared with itself (its final value is usually that one)."""
    steps = sorted({s for curve in curves.values() for s in curve})
    out = {}
    for step in steps:
        ids = [t for t in finals if step in curves.get(t, {}) and max(curves[t]) > step]
        rho = spearman([curves[t][step] for t in ids], [finals[t] for t in ids])
        if rho is not None:
            out[step] = rho
    return out


def stopping_summary(trials: Sequence[Any], mode: str) -> dict | None:
    """What stopping did in a finished study (None when nothing was stopped and no curves were kept).

    ``agreement``: :func:`agreement` over COMPLETE trials; ``hours_saved``: the accelerator-hours the
    stopped trials would have needed to finish, at their own rate; ``could_have_won``: stopped trials
    whose value at the step they stopped, improved by the largest gain any completed trial made from
    that step to its end, would reach the winner's (:func:`could_still_win`).
    """
    complete = [t for t in trials if str(t.state) == "COMPLETE" and t.value is not None and t.curve]
    stopped = [t for t in trials if str(t.state) == "PRUNED" and t.curve]
    if not complete and not stopped:
        return None
    sign = 1.0 if mode == "min" else -1.0
    curves = {t.trial_id: {int(s): v for s, v in t.curve.items()} for t in complete}
    rho = agreement(curves, {t.trial_id: t.value for t in complete})
    winner = min((sign * t.value for t in complete), default=None)
    out: dict[str, Any] = {"agreement": {str(s): round(r, 4) for s, r in rho.items()}}
    out["hours_saved"] = round(sum(_hours_left(t, complete) for t in stopped), 6)
    out["could_have_won"] = sorted(
        t.trial_id for t in stopped if winner is not None and _could_win(t, curves, sign, winner)
    )
    first = min(rho, default=None)
    out["low_agreement"] = first is not None and rho[first] < LOW_AGREEMENT
    return out


def _hours_left(trial: Any, complete: Sequence[Any]) -> float:
    hours = trial.cost.get("cost/accelerator_hours")
    full = max((t.steps for t in complete), default=0)
    if not hours or not trial.steps or full <= trial.steps:
        return 0.0
    return hours / trial.steps * (full - trial.steps)


def _could_win(trial: Any, curves: dict[str, dict[int, float]], sign: float, winner: float) -> bool:
    own = {int(s): v for s, v in trial.curve.items()}
    step = max(own)
    signed = [{s: sign * v for s, v in c.items()} for c in curves.values()]
    return could_still_win(sign * own[step], step, signed, winner) is True


def largest_gain(curves: Iterable[dict[int, float]], step: int) -> float | None:
    """The largest improvement after ``step`` among ``curves`` (``{step: value}``, lower is better) that
    have a value at ``step`` and a later one: that value minus the curve's best (None without one)."""
    gains = [c[step] - min(c.values()) for c in curves if step in c and max(c) > step]
    return max(gains, default=None)


def could_still_win(value: float, step: int, curves: Iterable[dict[int, float]], best: float) -> bool | None:
    """Whether a trial at ``value`` on ``step`` could still reach ``best`` (lower is better) if it gained
    after ``step`` as much as the most any of ``curves`` did (:func:`largest_gain`): ``value - gain <=
    best``. None when no curve tells (none has a value at ``step`` and a later one).

    The report asks it of stopped trials (could one have beaten the winner?); ``BoundedASHA`` asks it
    before stopping one (it stops only trials that could not)."""
    gain = largest_gain(curves, step)
    return None if gain is None else value - gain <= best


def sentences(trials: Sequence[Any], mode: str) -> list[str]:
    """What stopping cost and saved, in words for the report's verdict (empty when nothing was stopped
    and no curves were kept); the first says ``warning:`` when the first rung's agreement is low."""
    summary = stopping_summary(trials, mode)
    if summary is None:
        return []
    out = []
    rho = summary["agreement"]
    if rho:
        first, last = min(rho, key=int), max(rho, key=int)
        shown = [f"{rho[s]:.2f} at step {s}" for s in sorted(rho, key=int)]
        text = ", ".join(shown)
        if len(shown) > SHOWN_STEPS:
            text = ", ".join([*shown[: SHOWN_STEPS - 1], "…", shown[-1]])
            text += " (every step: the report's Early stopping table)"
        out.append(f"Step–final agreement (Spearman, complete trials): {text}.")
        if summary["low_agreement"]:
            out.insert(
                0,
                f"warning: at step {first} the trials' ranking agrees with their final ranking only "
                f"{rho[first]:.2f} (Spearman, below {LOW_AGREEMENT}); stopping there is close to guessing: "
                f"raise study.scheduler.grace_steps (agreement at step {last}: {rho[last]:.2f}).",
            )
    stopped = [t for t in trials if str(t.state) == "PRUNED"]
    if stopped:
        won = summary["could_have_won"]
        out.append(
            f"Early stopping ended {len(stopped)} trial(s) and saved about {summary['hours_saved']:.3g} "
            "accelerator-hours. "
            + (
                f"{len(won)} stopped trial(s) could still have beaten the winner, judging by the largest "
                f"gain a complete trial made after the same step: {', '.join(won)}."
                if won
                else "None of them could still have beaten the winner, judging by the largest gain a "
                "complete trial made after the same step."
            )
        )
    return out


def warning(trials: Sequence[Any], mode: str) -> str | None:
    """The low-agreement warning for the end of a study, if any."""
    first = next(iter(sentences(trials, mode)), "")
    return first if first.startswith("warning:") else None
