"""A trial against the base model (or another trial) on the same eval records: the gain and McNemar's test.

A final evaluation keeps each record's outcome by its ``where`` (``file:LINE``), as
``[click, type, step, format_error]`` (:data:`ITEM_FIELDS`), so two evaluations pair record by record.
"""

from __future__ import annotations

from ..data import scoring

ITEM_FIELDS = ("click", "type", "step", "format_error")
"""The per-record outcome, in this order: ``[click, type, step, format_error]`` (null where n/a)."""


PAIRED = {"eval/click_acc": 0, "eval/type_acc": 1, "eval/step_acc": 2}


def items(records, outcomes) -> dict[str, list]:
    """Each scored record's outcome by its ``where``: ``[click, type, step, format_error]``."""
    return scoring.by_record(records, outcomes)


def compare(base: dict[str, list], trial: dict[str, list], metric: str = "eval/click_acc") -> dict | None:
    """A trial's per-record outcomes against the base model's on the records both scored for ``metric``
    (``eval/click_acc``, ``eval/type_acc`` or ``eval/step_acc``): ``{"n", "base", "trial", "gain",
    "a_only", "b_only", "p_value", "method"}`` (``a`` the trial, ``b`` the base), or None when no record
    pairs."""
    field = PAIRED.get(metric)
    if field is None:
        raise ValueError(f"{metric} is not a per-record accuracy ({', '.join(PAIRED)})")
    keys = sorted(
        k for k in trial if k in base and trial[k][field] is not None and base[k][field] is not None
    )
    if not keys:
        return None
    a = [bool(trial[k][field]) for k in keys]
    b = [bool(base[k][field]) for k in keys]
    test = scoring.mcnemar(a, b)
    return {"base": sum(b) / len(b), "trial": sum(a) / len(a), "gain": (sum(a) - sum(b)) / len(keys), **test}


def metric_for(objective: str) -> str:
    """The per-record accuracy a trial is compared with the base on: the ``objective`` when it is one,
    else ``eval/click_acc``."""
    return objective if objective in PAIRED else "eval/click_acc"
