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

Every point and box is compared in float pixels of the record's screen image (its last, or the one the
format names), never in rounded relative units. A reference answer that parses as no action is a DataError
naming the record's ``file:LINE`` when its :func:`goal` is made: it is never silently left out. Every rate
comes with its count and a 95% Wilson interval, overall and per category field the data carries
(``data_type``, ``ui_type``, ``platform``, ``application``, ``group``). :func:`mcnemar` compares two models
on the same items.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import DataError
from . import actions, coordinates, samples

DISTANCE = 0.14
"""A box-less click is right within this distance of the reference point, both as fractions of the screen's
width and height (AITW's ``_TAP_DISTANCE_THRESHOLD``: 0.14 "of the screen")."""
Z95 = 1.959963984540054
COUNTS = ("n", "format_errors", "click_n", "click_hits", "nav_n", "type_hits", "step_hits")
"""The order of :func:`counts` (summed across ranks before :func:`rates`)."""


@dataclass(frozen=True)
class Goal:
    """What one record asks for, as scoring needs it: the reference action (its points in ``convention``)
    and the target box in float pixels of the screen image."""

    reference: actions.Action | None
    box: tuple[float, float, float, float] | None  # float pixels of the screen image
    convention: str  # the answer convention: the reference's (and the outputs' unless their format fixes one)
    size: coordinates.Size | None = None  # the screen image's displayed (width, height)
    categories: dict = field(default_factory=dict)
    resized: coordinates.Size | None = None  # the processor's resized size (for resized-pixels)


@dataclass(frozen=True)
class Outcome:
    """One record's result; ``None`` where a metric does not apply to the record."""

    format_error: bool
    click: bool | None
    type: bool | None
    step: bool | None
    categories: dict = field(default_factory=dict)


def goal(
    record, convention: str, size: coordinates.Size | None = None, bounds: coordinates.Bounds | None = None
) -> Goal:
    """The :class:`Goal` of a :class:`~raylora.data.samples.Sample` whose answer is in ``convention``, on its
    screen image (:func:`~raylora.data.samples.screen_size`, unless ``size`` is given); ``bounds`` are the
    processor's, which ``resized-pixels`` need (a DataError naming the record without them)."""
    reference = actions.parse(record.answer())
    if reference is None:
        raise DataError(
            record.where,
            f"the reference answer {_excerpt(record.answer())} names no action in any format raylora reads "
            "(see raylora.data.actions): it cannot be scored",
        )
    if size is None:
        size = samples.screen_size(record)
    resized = None
    if coordinates.get(convention).resized and size is not None:
        if bounds is None:
            raise DataError(record.where, RESIZED_NEEDS_BOUNDS)
        resized = bounds.resized(size)
    if record.box_pixels is not None:
        box = tuple(record.box_pixels)
    elif record.bbox is not None and size is not None:
        box = coordinates.box_to_pixels(record.bbox, convention, size, resized)
    else:
        box = tuple(record.bbox) if record.bbox is not None else None  # no screen: as written
    return Goal(reference, box, convention, size, dict(record.categories), resized)


def goals(records: Iterable, convention: str, bounds: coordinates.Bounds | None = None) -> list[Goal]:
    """:func:`goal` of each record."""
    return [goal(record, convention, bounds=bounds) for record in records]


def _excerpt(text: str, most: int = 60) -> str:
    return repr(text if len(text) <= most else text[: most - 1] + "…")


RESIZED_NEEDS_BOUNDS = (
    "resized-pixels need the processor's image bounds: give --min-pixels and --max-pixels (data.image in a "
    "spec), or name the data's convention with another data.coordinates"
)


# -- one record --------------------------------------------------------------------------------------


def score(output: str, goal: Goal) -> Outcome | None:
    """How ``output`` does on ``goal`` (None when the reference itself names no action). Every point is
    compared in float pixels of the screen image."""
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
    # The reference's own format is read in the answer convention (the model learned the data's); another
    # format that fixes a convention (Qwen3-VL's 0–1000, MAI-UI's 0–999) in that one.
    src = predicted.native if predicted.native and predicted.format != ref.format else goal.convention
    predicted, ref = _in_pixels(predicted, src, goal), _in_pixels(ref, goal.convention, goal)
    click = None
    if is_click:
        same_kind = not nav or _kind(predicted) == _kind(ref)
        click = same_kind and _on_target(predicted.point, ref.point, goal)
    type_ok = step_ok = None
    if nav:
        type_ok = _kind(predicted) == _kind(ref)
        step_ok = type_ok and _arguments_match(predicted, ref, goal)
    return Outcome(False, click, type_ok, step_ok, goal.categories)


def _kind(action: actions.Action) -> str:
    """The action type as compared: a scroll is a swipe (their directions are compared as the finger's)."""
    return "swipe" if action.type == "scroll" else action.type


def _in_pixels(action: actions.Action, src: str, goal: Goal) -> actions.Action:
    """``action`` with its points (written in convention ``src``) as float pixels of the screen. With no
    screen known (a record without images) a relative answer convention's extent stands in for it; points
    that still cannot be converted are kept as written."""
    screen = _screen(goal)
    convention = coordinates.get(src)
    if screen is None and convention.relative is not None:
        return action

    def pixels(point):
        if point is None:
            return None
        if screen is None or (convention.relative is None and not convention.resized):
            return float(point[0]), float(point[1])
        return coordinates.to_pixels(point, src, screen, goal.resized)

    return dataclasses.replace(action, point=pixels(action.point), end=pixels(action.end))


def _screen(goal: Goal) -> tuple[float, float] | None:
    """The screen's (width, height): the image's, or a relative answer convention's extent without one."""
    if goal.size is not None:
        return goal.size
    convention = coordinates.get(goal.convention)
    return convention.extent((1, 1), None) if convention.relative is not None else None


def _on_target(point, ref_point, goal: Goal) -> bool:
    """Inside the goal's box (edges included), or with no box within :data:`DISTANCE` of the reference;
    points in pixels."""
    if point is None:
        return False
    if goal.box is not None:
        return goal.box[0] <= point[0] <= goal.box[2] and goal.box[1] <= point[1] <= goal.box[3]
    return _near(point, ref_point, goal)


def _near(a, b, goal: Goal) -> bool:
    """Within :data:`DISTANCE` of the reference, both as fractions of the screen's width and height
    (AITW's and AndroidControl's rule; points in pixels); for pixels of an unknown screen, of the far corner
    the two points imply."""
    if a is None or b is None:
        return False
    width, height = _screen(goal) or (max(a[0], b[0], 1.0), max(a[1], b[1], 1.0))
    return math.hypot((a[0] - b[0]) / width, (a[1] - b[1]) / height) <= DISTANCE


def _arguments_match(predicted: actions.Action, ref: actions.Action, goal: Goal) -> bool:
    kind = ref.type
    if kind in ("click", "long_press", "double_click", "right_click", "triple_click"):
        return _on_target(predicted.point, ref.point, goal)
    if kind == "drag":
        start = ref.point is None or _on_target(predicted.point, ref.point, goal)
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
        lines = path.read_bytes().splitlines()
    except OSError as e:
        raise DataError(str(path), f"cannot read: {e.strerror or e}") from None
    for number, raw in enumerate(lines, 1):
        where = f"{path}:{number}"
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            raise DataError(where, f"not UTF-8 ({e.reason} at byte {e.start})") from None
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
