"""What the readers of the GUI datasets that come as episodes or element lists yield — one :class:`Step`
at a time, points and boxes as 0–1 fractions of the screenshot — and the helpers they share. The readers
(:mod:`.androidcontrol`, :mod:`.odyssey`, :mod:`.aguvis`, :mod:`.elements`) read each project's published
layout; :mod:`.convert` writes the steps as chat records.

    androidcontrol  GZIP TFRecord files of tf.train.Example episodes, pixels     (:mod:`.androidcontrol`)
    gui-odyssey     one JSON per episode, 0–1000                              (:mod:`.odyssey`)
    aguvis          stage 1 / stage 2 records, pyautogui / mobile calls, 0–1  (:mod:`.aguvis`)
    os-atlas        element lists, 0–1                                        (:mod:`.elements`)
    showui          ShowUI's prepared metadata (AMEX), 0–1                     (:mod:`.elements`)

Swipe directions are the finger's (MAI-UI's ``swipe``): AndroidControl's ``scroll`` names the direction
the content scrolls (``down`` shows what is below: the finger swipes up) and pyautogui's ``scroll(+n)``
scrolls up (the finger swipes down).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import DataError

Point = tuple[float, float]


@dataclass(frozen=True)
class Act:
    """One reference action in MAI-UI's action space; points are 0–1 fractions of the screenshot."""

    type: str
    point: Point | None = None
    end: Point | None = None
    direction: str | None = None
    text: str | None = None
    button: str | None = None
    status: str | None = None


@dataclass(frozen=True)
class Shot:
    """A screenshot: a path to read, or ``data`` (PNG bytes) to write under ``name``."""

    name: str
    size: tuple[int, int]
    data: bytes | None = None


@dataclass(frozen=True)
class Step:
    """One record to write: the screenshot, the instruction, the reference action (and box), and the
    screenshots and actions before it in its episode (oldest first)."""

    shot: Shot
    instruction: str
    act: Act
    where: str
    box: tuple[float, float, float, float] | None = None
    grounding: bool = False
    history: tuple[tuple[Shot, Act], ...] = ()
    categories: dict = field(default_factory=dict)
    thought: str | None = None
    """The reasoning written before the action (Aguvis stage 2's inner monologue), when there is one."""


@dataclass(frozen=True)
class Dropped:
    """A step or record left out, and why (counted and printed by the converter)."""

    where: str
    reason: str


# -- shared by the readers --------------------------------------------------------------------------


def screenshot(base: Path, folder: str, name: Any, where: str) -> Shot:
    """The screenshot ``name`` beside ``base``, in ``base/folder`` or in ``base/../folder``."""
    if not isinstance(name, str) or not name:
        raise DataError(where, f"expected a screenshot file name, got {name!r}")
    for candidate in (base / name, base / folder / name, base.parent / folder / name):
        if candidate.is_file():
            return Shot(str(candidate), _size(candidate, where))
    raise DataError(where, f"screenshot not found: {base / folder / name}")


def _size(path: Path, where: str) -> tuple[int, int]:
    from PIL import Image

    try:
        with Image.open(path) as image:
            return image.size
    except (OSError, ValueError) as e:
        raise DataError(where, f"cannot read screenshot {path}: {e}") from None


def load_json(path: Path) -> Any:
    """A JSON file (a DataError naming it when it is not JSON)."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as e:
        raise DataError(str(path), f"not valid JSON ({e})") from None


def json_records(src: Path) -> Iterator[tuple[str, Any]]:
    """A JSON array's records (parsed whole: text, not screenshots) or a JSONL file's, line by line."""
    files = sorted(src.glob("*.json*")) if src.is_dir() else [src]
    for file in files:
        if file.suffix == ".jsonl":
            with file.open(encoding="utf-8") as f:
                for number, line in enumerate(f, start=1):
                    if not line.strip():
                        continue
                    try:
                        yield f"{file}:{number}", json.loads(line)
                    except ValueError as e:
                        raise DataError(f"{file}:{number}", f"malformed JSON ({e})") from None
            continue
        records = load_json(file)
        if not isinstance(records, list):
            raise DataError(str(file), "expected a JSON array of records")
        for index, row in enumerate(records):
            yield f"{file}[{index}]", row


def split_ids(folder: Path, default: str, split: str | None) -> set[str] | None:
    """The episode ids of ``split`` (``NAME`` in ``folder/default``, or ``FILE.json:NAME``)."""
    if split is None:
        return None
    file, _, name = split.rpartition(":") if ".json:" in split else ("", "", split)
    path = Path(file) if file else folder / default
    table = load_json(path) if path.is_file() else None
    if not isinstance(table, dict):
        raise DataError("--split", f"no split file {path} (give FILE.json:NAME)")
    if name not in table:
        raise DataError("--split", f"{path} has no split {name!r} (splits: {', '.join(sorted(table))})")
    return {str(Path(str(i)).stem) if str(i).endswith(".json") else str(i) for i in table[name]}


def unit(point: list[float], extent: float) -> Point:
    """A point on a 0–``extent`` grid as 0–1 fractions."""
    return point[0] / extent, point[1] / extent


def direction(start: Point, end: Point) -> str:
    """The direction a finger moving from ``start`` to ``end`` swipes."""
    dx, dy = end[0] - start[0], end[1] - start[1]
    if abs(dx) > abs(dy):
        return "right" if dx > 0 else "left"
    return "down" if dy > 0 else "up"
