"""Dataset samples read and checked: any format :mod:`.formats` reads → one :class:`Sample` each
(conversation, images, target box), and the screenshots themselves (header size, decoding).

A record, one per JSONL line (image paths are relative to the file; ``bbox`` is optional, in the same
0–1000 space as the answer)::

    {"messages": [{"role": "user", "content": [{"type": "image", "image": "shots/1.png"},
                                               {"type": "text", "text": "click the OK button"}]},
                  {"role": "assistant", "content": [{"type": "text", "text": "click(412, 230)"}]}],
     "bbox": [380, 200, 445, 260]}

Parquet files hold the same columns; ``messages`` may be nested columns or a JSON string, and an image may
be a path or the encoded image bytes. Turning a record into the model's inputs is
:mod:`raylora.train.encode`'s business.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import DataError
from . import formats, images


@dataclass(frozen=True)
class Sample:
    """One validated conversation; ``images`` are paths or bytes in the order they appear."""

    messages: list[dict]
    images: list[Any]
    bbox: tuple[float, float, float, float] | None
    where: str
    categories: dict = field(default_factory=dict)
    """Fields per-category metrics split by (ScreenSpot's ``data_type``, ``platform``, ...)."""
    id: Any = None
    screen: int = -1
    """The index in ``images`` of the screenshot the answer and box refer to: the last one (a navigation
    history ends with the current screen) unless the format names another (ms-swift ``image_id``)."""
    box_pixels: tuple[float, float, float, float] | None = None
    """The target box in float pixels of the screen image, when the format knows it (ScreenSpot, ms-swift
    ``objects``): scoring uses it rather than ``bbox`` converted back from the answer convention."""

    def prompt_messages(self) -> list[dict]:
        """The conversation up to (not including) its last assistant turn."""
        last = max(i for i, m in enumerate(self.messages) if m["role"] == "assistant")
        return self.messages[:last]

    def instruction(self) -> str:
        """The text of the user turn the last assistant turn answers."""
        return _text_of(self.prompt_messages()[-1]["content"])

    def answer(self) -> str:
        """The text of the last assistant turn."""
        last = [m for m in self.messages if m["role"] == "assistant"][-1]
        return _text_of(last["content"])


# -- reading -----------------------------------------------------------------------------------------


def read(
    path: str | Path,
    limit: int | None = None,
    fmt: str = "auto",
    coordinates: str = "qwen3vl",
    template: str = "click",
    spill_dir: Path | None = None,
    columns: dict | None = None,
    categories: Sequence[str] | None = None,
    bounds=None,
) -> list[Sample]:
    """Read and validate the records of a dataset in any of :mod:`raylora.data.formats`; the first bad one
    raises DataError naming it. With ``spill_dir``, images given as bytes are written there (named by their
    content) and referenced by path, so a dataset of embedded screenshots is not held in memory.
    ``categories`` names the record fields per-category metrics split by (default :data:`CATEGORIES`);
    ``bounds`` (:class:`~raylora.data.coordinates.Bounds`) the processor's, for answers written in
    ``resized-pixels``."""
    records = []
    ids: dict[str, str] = {}
    for where, row, root in formats.rows(str(path), fmt, coordinates, template, columns, bounds):
        if isinstance(row, DataError):
            raise row
        record = _record(row, where, root, coordinates, spill_dir, categories)
        _unique(record, ids)
        records.append(record)
        if limit is not None and len(records) >= limit:
            break
    if not records:
        raise DataError(str(path), "no records")
    _warn_unit_range(str(path), records, coordinates, template)
    return records


CATEGORIES = ("data_type", "ui_type", "platform", "application", "group", "data_source")
"""The record fields per-category metrics split by unless ``data.categories`` names others."""


class CoordinateWarning(UserWarning):
    """Coordinates that fit their convention but look like another one's."""


def _unique(record: Sample, ids: dict[str, str]) -> None:
    """A second record with the same id: a prediction by id would silently score against the last one."""
    if record.id is None:
        return
    key = str(record.id)
    if key in ids:
        raise DataError(record.where, f"id {record.id!r} is also the id of {ids[key]}; ids must be unique")
    ids[key] = record.where


def _warn_unit_range(path: str, records: list[Sample], convention: str, template: str) -> None:
    """Every coordinate of the file within 0–1 under a 0–1000 or 0–999 convention: the data is very likely
    written in 0–1 (``unit``), and every point would land in the top-left corner."""
    from . import actions, coordinates, templates

    answer = templates.get(template).answer_convention(convention)
    extent = coordinates.get(answer).relative
    if extent is None or extent <= 1:
        return
    values = []
    for record in records:
        values += [*(getattr(actions.parse(record.answer()), "point", None) or ()), *(record.bbox or ())]
    if values and all(0 <= v <= 1 for v in values) and any(v != 0 for v in values):
        import warnings

        warnings.warn(
            CoordinateWarning(
                f"{path}: every coordinate lies within 0–1, but the answers are read in {answer} "
                f"(0–{extent:g}); is the data written in unit (0–1)? Give data.coordinates: unit"
            ),
            stacklevel=3,
        )


def problems(
    path: str | Path,
    fmt: str = "auto",
    coordinates: str = "qwen3vl",
    template: str = "click",
    most: int = 20,
    columns: dict | None = None,
    categories: Sequence[str] | None = None,
    bounds=None,
) -> list[DataError]:
    """Every bad record of a dataset (up to ``most``), each naming its record: ``raylora validate``. Every
    image is opened and decoded in full (a truncated file, a text file named ``.png``, a zero-sized or
    oversized image, one the processor would refuse: an aspect ratio over 200), and a repeated id."""
    found: list[DataError] = []
    ids: dict[str, str] = {}
    seen: list[Sample] = []
    try:
        for where, row, root in formats.rows(str(path), fmt, coordinates, template, columns, bounds):
            try:
                if isinstance(row, DataError):
                    raise row
                record = _record(row, where, root, coordinates, categories=categories)
                _unique(record, ids)
                seen.append(record)
                for ref in record.images:
                    images.load(ref, where)
            except DataError as e:
                found.append(e)
                if len(found) >= most:
                    found.append(DataError(str(path), f"stopped after {most} bad records"))
                    break
    except DataError as e:  # the file itself: missing, empty, not a dataset
        return [e]
    _warn_unit_range(str(path), seen, coordinates, template)
    return found


def _record(
    row: Any,
    where: str,
    root: Path,
    convention: str = "qwen3vl",
    spill_dir: Path | None = None,
    categories: Sequence[str] | None = None,
) -> Sample:
    if not isinstance(row, dict) or not isinstance(row.get("messages"), list) or not row["messages"]:
        raise DataError(where, 'a record needs "messages": a non-empty list of {"role", "content"} turns')
    refs: list[Any] = []
    messages = []
    for i, message in enumerate(row["messages"]):
        if not isinstance(message, dict) or message.get("role") not in ("system", "user", "assistant"):
            raise DataError(where, f"messages[{i}] needs a role of system, user or assistant")
        content = message.get("content")
        if isinstance(content, str):
            content = [{"type": "text", "text": content}]
        if not isinstance(content, list):
            raise DataError(where, f"messages[{i}].content must be a string or a list of items")
        items = []
        for j, item in enumerate(content):
            kind = item.get("type") if isinstance(item, dict) else None
            if kind == "text" and isinstance(item.get("text"), str):
                items.append({"type": "text", "text": item["text"]})
            elif kind == "image":
                ref = images.resolve(item.get("image"), root, f"{where}: messages[{i}].content[{j}]")
                refs.append(_spilled(ref, spill_dir) if spill_dir is not None else ref)
                items.append({"type": "image"})
            else:
                raise DataError(where, f"messages[{i}].content[{j}] must be a text or image item")
        messages.append({"role": message["role"], "content": items})
    if not any(m["role"] == "assistant" and _text_of(m["content"]).strip() for m in messages):
        raise DataError(where, "no assistant turn with text: there is nothing to learn from this record")
    fields = {str(k): str(v) for k, v in (row.get("categories") or {}).items()}
    for name in CATEGORIES if categories is None else categories:
        value = row.get(name)
        if isinstance(value, (str, int, float)) and not isinstance(value, bool) and str(value):
            fields.setdefault(name, str(value))
    screen = _screen(row.get(formats.SCREEN), len(refs), where)
    _check_range(row, messages, where, convention, refs, screen)
    return Sample(
        messages,
        refs,
        _bbox(row.get("bbox"), where),
        where,
        fields,
        row.get("id"),
        screen,
        _bbox(row.get("box_pixels"), where),
    )


def _screen(index: Any, count: int, where: str) -> int:
    """The index of the screenshot the answer refers to: the one the format names, else the last image."""
    if index is None:
        return max(count - 1, 0)
    if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < max(count, 1):
        raise DataError(where, f"image {index!r} is not one of the record's {count} image(s) (from 0)")
    return index


def _spilled(ref: Any, folder: Path) -> Any:
    """Image bytes as a file named by their content (written once), so records hold a path, not pixels."""
    if not isinstance(ref, bytes):
        return ref
    import hashlib
    import os

    target = folder / hashlib.sha256(ref).hexdigest()[:32]
    if not target.is_file():
        folder.mkdir(parents=True, exist_ok=True)
        tmp = target.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_bytes(ref)
        os.replace(tmp, target)
    return str(target)


def _check_range(
    row: dict, messages: list[dict], where: str, convention: str, refs: list, screen: int
) -> None:
    """An answer point or box outside the convention's range is the pixels-vs-relative mix-up: relative
    conventions are checked against their range, ``pixels`` against the screen image's size (read from its
    header). ``resized-pixels`` depend on the processor's bounds and are not checked here."""
    from . import actions, coordinates

    chosen = coordinates.get(convention)
    if chosen.resized or (chosen.relative is None and not refs):
        return
    answer = [m for m in messages if m["role"] == "assistant"][-1]
    action = actions.parse(_text_of(answer["content"]))
    point = action.point if action is not None else None
    values = [*(point or ()), *(row.get("bbox") or ())]
    if not values:
        return
    size = (1, 1) if chosen.relative is not None else images.size(refs[screen], where)
    problem = coordinates.out_of_range(values, convention, size)
    if problem:
        raise DataError(where, f"{problem}: is data.coordinates ({convention}) the convention of this data?")


def _bbox(value: Any, where: str) -> tuple[float, float, float, float] | None:
    if value is None:
        return None
    ok = isinstance(value, list) and len(value) == 4 and all(isinstance(v, (int, float)) for v in value)
    if not ok or not (value[0] <= value[2] and value[1] <= value[3]):
        raise DataError(where, f"bbox must be [x0, y0, x1, y1] with x0 <= x1 and y0 <= y1, got {value!r}")
    return tuple(float(v) for v in value)


def _text_of(content: list[dict]) -> str:
    return "".join(item["text"] for item in content if item["type"] == "text")


MAX_IMAGE_PIXELS = images.MAX_IMAGE_PIXELS
image_size = images.size
load_image = images.load


def screen_size(record: Sample) -> tuple[int, int] | None:
    """The displayed size of the screenshot ``record``'s answer and box refer to (its :attr:`Sample.screen`
    image), or None for a record without images: the one size training, ``eval``, ``score`` and the
    study's evaluation convert coordinates with."""
    if not record.images:
        return None
    return images.size(record.images[record.screen], record.where)
