"""Scoring GUI-agent outputs against data records (pure Python, no torch): what ``raylora score``,
``raylora eval`` and the trainer's evaluation all report, through this one module. Each rule is the one the
published harness applies (the README's *Evaluation* names them).

Each record's reference answer (its last assistant turn) is parsed with :mod:`.actions`:

- a **click record** is one whose reference is a click (a grounding answer, or a navigation step that
  clicks); ``click_acc`` is the share whose output names a point on target — inside the record's ``bbox``,
  edges included (ScreenSpot-Pro's rule), or, with no box, within 0.14 of the reference point measured in
  fractions of the screen's width and height (AITW's rule, which AndroidControl and GUI-Odyssey harnesses
  follow). For a grounding reference any output with a point counts; a navigation click must also be a
  click.
- a **navigation record** is one whose reference is in an agent action format (MAI-UI ``<tool_call>``,
  UI-TARS, pyautogui, ...): ``type_acc`` is the share with the same action type (``scroll`` and ``swipe``
  are one type), ``step_acc`` the share with the same type and matching arguments — the click rule above
  for click/long_press (and a drag's start; its end by the distance rule), the same finger direction for
  swipe/scroll (:attr:`.actions.Action.finger`: a view direction is the opposite finger direction), the
  same button, the same status for terminate, the same keys for hotkey (:func:`.actions.keys`), and for
  type/open/answer the AndroidControl harnesses' text rule (:func:`text_matches`).
- an output that parses as no action is a **format error**: a miss in every accuracy, and counted on its
  own (``format_error_rate`` over all scored records).

A reference answer that parses as no action is a DataError naming the record's ``file:LINE`` when its
:func:`target` is made: it is never silently left out. Every rate comes with its count and a 95% Wilson
interval, overall and per category field the data carries (``data_type``, ``ui_type``, ``platform``,
``application``, ``group``). :func:`mcnemar` compares two models on the same items.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import DataError
from . import actions, coordinates

DISTANCE = 0.14
"""A box-less click is right within this distance of the reference point, both as fractions of the screen's
width and height (AITW's ``_TAP_DISTANCE_THRESHOLD``: 0.14 "of the screen")."""
Z95 = 1.959963984540054
COUNTS = ("n", "format_errors", "click_n", "click_hits", "nav_n", "type_hits", "step_hits")
"""The order of :func:`counts` (summed across ranks before :func:`rates`)."""


@dataclass(frozen=True)
class Target:
    """What one record asks for, as scoring needs it."""

    reference: actions.Action | None
    box: tuple[float, float, float, float] | None
    convention: str  # the answer convention: the reference's and the box's
    size: coordinates.Size | None = None  # the screenshot's (width, height), when read
    categories: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Outcome:
    """One record's result; ``None`` where a metric does not apply to the record."""

    format_error: bool
    click: bool | None
    type: bool | None
    step: bool | None
    categories: dict = field(default_factory=dict)


def target(record, convention: str, size: coordinates.Size | None = None) -> Target:
    """The :class:`Target` of a :class:`~raylora.data.samples.Sample` whose answer is in ``convention``;
    its image size is read from the image header when scoring may need it (see :func:`needs_size`)."""
    reference = actions.parse(record.answer())
    if reference is None:
        raise DataError(
            record.where,
            f"the reference answer {_excerpt(record.answer())} names no action in any format raylora reads "
            "(see raylora.data.actions): it cannot be scored",
        )
    box = tuple(record.bbox) if record.bbox is not None else None
    if size is None and needs_size(reference, box, convention) and len(record.images) == 1:
        size = image_size(record.images[0])
    return Target(reference, box, convention, size, dict(record.categories))


def _excerpt(text: str, most: int = 60) -> str:
    return repr(text if len(text) <= most else text[: most - 1] + "…")


def targets(records: Iterable, convention: str) -> list[Target]:
    """:func:`target` of each record."""
    return [target(record, convention) for record in records]


def needs_size(reference: actions.Action | None, box, convention: str) -> bool:
    """Whether scoring against this reference needs the screenshot's size: a pixel convention (outputs in
    a relative format are converted), or a point judged by distance (no box, or a navigation step)."""
    if reference is None:
        return False
    return coordinates.get(convention).relative is None or box is None or reference.navigation


def image_size(ref: Any) -> coordinates.Size | None:
    """(width, height) of an image path or bytes, from its header (None when it cannot be read)."""
    import io

    from PIL import Image

    try:
        with Image.open(io.BytesIO(ref) if isinstance(ref, bytes) else ref) as image:
            return image.size
    except (OSError, ValueError):
        return None


# -- one record --------------------------------------------------------------------------------------


def score(output: str, goal: Target) -> Outcome | None:
    """How ``output`` does on ``goal`` (None when the reference itself names no action)."""
    ref = goal.reference
    if ref is None:
        return None
    is_click = ref.type == "click"
    nav = ref.navigation
    predicted = actions.parse(output)
    if predicted is None:
        return Outcome(
            True, False if is_click else None, False if nav else None, False if nav else None, goal.categories
        )
    predicted = actions.in_convention(predicted, goal.convention, ref.format, goal.size)
    click = None
    if is_click:
        same_kind = not nav or _kind(predicted) == _kind(ref)
        click = same_kind and _on_target(predicted.point, ref.point, goal.box, goal)
    type_ok = step_ok = None
    if nav:
        type_ok = _kind(predicted) == _kind(ref)
        step_ok = type_ok and _arguments_match(predicted, ref, goal)
    return Outcome(False, click, type_ok, step_ok, goal.categories)


def _kind(action: actions.Action) -> str:
    """The action type as compared: a scroll is a swipe (their directions are compared as the finger's)."""
    return "swipe" if action.type == "scroll" else action.type


def _on_target(point, ref_point, box, goal: Target) -> bool:
    if point is None:
        return False
    if box is not None:
        return box[0] <= point[0] <= box[2] and box[1] <= point[1] <= box[3]
    return _near(point, ref_point, goal)


def _near(point, ref_point, goal: Target) -> bool:
    """Within :data:`DISTANCE` of the reference, both as fractions of the screen's width and height (the
    size is needed for pixel conventions; with none known, the far corner the two points imply)."""
    if point is None or ref_point is None:
        return False
    convention = coordinates.get(goal.convention)
    size = goal.size
    if size is None and convention.relative is None:
        size = (max(point[0], ref_point[0], 1.0), max(point[1], ref_point[1], 1.0))
    (ax, ay), (bx, by) = (coordinates.to_unit(p, goal.convention, size or (1, 1)) for p in (point, ref_point))
    return math.hypot(ax - bx, ay - by) <= DISTANCE


def _arguments_match(predicted: actions.Action, ref: actions.Action, goal: Target) -> bool:
    kind = ref.type
    if kind in ("click", "long_press", "double_click", "right_click", "triple_click"):
        return _on_target(predicted.point, ref.point, goal.box, goal)
    if kind == "drag":
        start = ref.point is None or _on_target(predicted.point, ref.point, goal.box, goal)
        return start and _near(predicted.end, ref.end, goal)
    if kind in ("swipe", "scroll"):
        return ref.finger is None or predicted.finger == ref.finger
    if kind == "system_button":
        return predicted.button == ref.button
    if kind == "terminate":
        return ref.status is None or predicted.status == ref.status
    if kind == "hotkey":
        return actions.keys(predicted.text or "") == actions.keys(ref.text or "")
    if kind in ("type", "open", "answer"):
        return text_matches(predicted.text, ref.text)
    return True  # wait, call_user, ...: the type is the whole action


def normalize_text(text: str | None) -> str:
    """Text as the AndroidControl harnesses compare it: lower-cased, surrounding space stripped."""
    return "" if text is None else text.lower().strip()


def text_matches(predicted: str | None, reference: str | None) -> bool:
    """The AndroidControl harnesses' text rule: after :func:`normalize_text`, equal or one inside the other
    (so ``"hello"`` matches ``"Hello world"``, and inner spacing counts: ``"a  b"`` does not match
    ``"a b"``). A missing text matches only a missing one."""
    if predicted is None or reference is None:
        return predicted is reference
    a, b = normalize_text(predicted), normalize_text(reference)
    return a in b or b in a


# -- many records ------------------------------------------------------------------------------------


def by_record(records: Sequence, outcomes: Sequence[Outcome | None]) -> dict[str, list]:
    """Each scored record's outcome by its ``where``: ``[click, type, step, format_error]`` (null where
    n/a), the form a study pairs a trial with the base model in (:mod:`raylora.study.baseline`)."""
    return {
        record.where: [o.click, o.type, o.step, o.format_error]
        for record, o in zip(records, outcomes, strict=True)
        if o is not None
    }


def counts(outcomes: Iterable[Outcome | None]) -> list[float]:
    """The sums of :data:`COUNTS` (floats, so ranks can all-reduce them)."""
    total = [0.0] * len(COUNTS)
    for o in outcomes:
        if o is None:
            continue
        total[0] += 1
        total[1] += o.format_error
        if o.click is not None:
            total[2] += 1
            total[3] += o.click
        if o.type is not None:
            total[4] += 1
            total[5] += o.type
            total[6] += bool(o.step)
    return total


def rates(totals: Sequence[float], prefix: str = "") -> dict:
    """``click_acc``, ``format_error_rate`` and, with navigation records, ``type_acc``/``step_acc`` from
    :func:`counts` — the trainer's ``eval/...`` metrics with ``prefix="eval/"``. A rate with no records is
    left out."""
    c = dict(zip(COUNTS, totals, strict=True))
    out = {}
    if c["n"]:
        out[f"{prefix}format_error_rate"] = c["format_errors"] / c["n"]
    if c["click_n"]:
        out[f"{prefix}click_acc"] = c["click_hits"] / c["click_n"]
    if c["nav_n"]:
        out[f"{prefix}type_acc"] = c["type_hits"] / c["nav_n"]
        out[f"{prefix}step_acc"] = c["step_hits"] / c["nav_n"]
    return out


def summarize(outcomes: Sequence[Outcome | None], by: Sequence[str] | None = None) -> dict:
    """The report ``raylora score --json`` prints: counts, rates with 95% Wilson intervals, and ``by``:
    the same per value of each category field (all fields the records carry unless ``by`` names some)."""
    scored = [o for o in outcomes if o is not None]
    out = _block(scored)
    out["unscored"] = len(outcomes) - len(scored)
    fields = list(by) if by is not None else sorted({k for o in scored for k in o.categories})
    out["by"] = {}
    for name in fields:
        values = sorted({o.categories[name] for o in scored if name in o.categories})
        out["by"][name] = {v: _block([o for o in scored if o.categories.get(name) == v]) for v in values}
    return out


def _block(scored: list[Outcome]) -> dict:
    c = dict(zip(COUNTS, counts(scored), strict=True))
    n, clicks, nav = int(c["n"]), int(c["click_n"]), int(c["nav_n"])
    block: dict = {"n": n, "format_errors": int(c["format_errors"])}
    block["format_error_rate"] = c["format_errors"] / n if n else None
    block["click_n"] = clicks
    block["click_acc"] = c["click_hits"] / clicks if clicks else None
    block["click_acc_ci"] = wilson(int(c["click_hits"]), clicks)
    if nav:
        block["nav_n"] = nav
        for name, hits in (("type_acc", c["type_hits"]), ("step_acc", c["step_hits"])):
            block[name] = hits / nav
            block[f"{name}_ci"] = wilson(int(hits), nav)
    return block


# -- statistics --------------------------------------------------------------------------------------


def wilson(successes: int, n: int, z: float = Z95) -> list[float] | None:
    """The Wilson score interval ``[lo, hi]`` for ``successes`` out of ``n`` (95% by default); None for
    n = 0."""
    if n <= 0:
        return None
    p = successes / n
    denominator = 1 + z * z / n
    center = (p + z * z / (2 * n)) / denominator
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denominator
    return [max(0.0, center - half), min(1.0, center + half)]


def mcnemar(a: Sequence[bool], b: Sequence[bool], exact_below: int = 25) -> dict:
    """McNemar's paired test of two models right/wrong on the same items (``a[i]``, ``b[i]``).

    ``a_only``/``b_only`` are the discordant counts; the two-sided ``p_value`` is the exact binomial one
    when they sum to fewer than ``exact_below``, otherwise the continuity-corrected chi-square (1 dof).
    """
    if len(a) != len(b):
        raise ValueError(f"McNemar needs paired results: {len(a)} vs {len(b)} items")
    a_only = sum(1 for x, y in zip(a, b, strict=True) if x and not y)
    b_only = sum(1 for x, y in zip(a, b, strict=True) if y and not x)
    discordant = a_only + b_only
    if discordant == 0:
        p, method = 1.0, "exact"
    elif discordant < exact_below:
        tail = sum(math.comb(discordant, i) for i in range(min(a_only, b_only) + 1)) / 2**discordant
        p, method = min(1.0, 2 * tail), "exact"
    else:
        statistic = (abs(a_only - b_only) - 1) ** 2 / discordant
        p, method = math.erfc(math.sqrt(statistic / 2)), "chi2"
    return {"n": len(a), "a_only": a_only, "b_only": b_only, "p_value": p, "method": method}


def paired(new: Sequence[Outcome | None], old: Sequence[Outcome | None]) -> dict:
    """Two models' outcomes on the same records (``new[i]`` and ``old[i]`` the same record): for each
    accuracy with records both scored, ``{"n", "old", "new", "gain", "a_only", "b_only", "p_value",
    "method"}`` — McNemar's test with ``a`` the new model, ``b`` the old."""
    out = {}
    for name in ("click", "type", "step"):
        pairs = [
            (getattr(a, name), getattr(b, name))
            for a, b in zip(new, old, strict=True)
            if a is not None
            and b is not None
            and getattr(a, name) is not None
            and getattr(b, name) is not None
        ]
        if not pairs:
            continue
        a, b = [bool(x) for x, _ in pairs], [bool(y) for _, y in pairs]
        test = mcnemar(a, b)
        out[f"{name}_acc"] = {
            "old": sum(b) / len(b),
            "new": sum(a) / len(a),
            "gain": (sum(a) - sum(b)) / len(pairs),
            **test,
        }
    return out


# -- prediction files --------------------------------------------------------------------------------


def read_predictions(path: str | Path, records: Sequence) -> dict[int, str]:
    """``{record position: output}`` from a JSONL file of ``{"index": i, "output": "..."}`` (or
    ``{"id": ..., "output": ...}`` for records that carry an ``id``); a bad line raises DataError naming
    ``file:LINE``."""
    path = Path(path)
    by_id = {str(r.id): i for i, r in enumerate(records) if r.id is not None}
    found: dict[int, str] = {}
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as e:
        raise DataError(str(path), f"cannot read: {e.strerror or e}") from None
    for number, line in enumerate(lines, 1):
        where = f"{path}:{number}"
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError as e:
            raise DataError(where, f"not a JSON object ({e.msg})") from None
        if not isinstance(row, dict):
            raise DataError(where, 'a prediction is an object {"index": i, "output": "..."}')
        if not isinstance(row.get("output"), str):
            raise DataError(where, 'needs "output": the model\'s text (a string)')
        if isinstance(row.get("index"), int) and not isinstance(row["index"], bool):
            index = row["index"]
            if not 0 <= index < len(records):
                raise DataError(where, f"index {index} is not a record of the data (0..{len(records) - 1})")
        elif "id" in row and row["id"] is not None:
            if str(row["id"]) not in by_id:
                hint = "" if by_id else ' (the data\'s records carry no id; use "index")'
                raise DataError(where, f"id {row['id']!r} is not a record of the data{hint}")
            index = by_id[str(row["id"])]
        else:
            raise DataError(where, 'needs "index" (the record\'s position in the data, from 0) or "id"')
        if index in found:
            raise DataError(where, f"a second prediction for record {index}")
        found[index] = row["output"]
    if not found:
        raise DataError(str(path), "no predictions")
    return found
