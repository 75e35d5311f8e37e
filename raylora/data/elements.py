"""Grounding element lists: OS-Atlas (``img_filename`` + ``elements[{instruction, bbox, data_type}]``) and
ShowUI's prepared metadata, AMEX included (``img_url``, ``img_size``, ``element[{instruction, bbox,
point}]``). Both write 0–1 fractions of the screenshot; a box with a value above 1 is read as pixels.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ..errors import DataError
from . import episodes
from .episodes import Act, Dropped, Shot, Step


def os_atlas(src: Path) -> Iterator[Step | Dropped]:
    """The elements of an OS-Atlas file (or folder of them), one step each."""
    for where, row in episodes.json_records(src):
        if not isinstance(row, dict) or "img_filename" not in row or "elements" not in row:
            raise DataError(
                where, "not an OS-Atlas element list: expected the fields 'img_filename' and 'elements'"
            )
        shot = episodes.screenshot(src.parent, "images", row["img_filename"], where)
        for i, element in enumerate(row["elements"]):
            yield _element(shot, element, f"{where} element {i}")


def showui(src: Path) -> Iterator[Step | Dropped]:
    """The elements of a ShowUI metadata file (or folder of them), one step each."""
    for where, row in episodes.json_records(src):
        if not isinstance(row, dict) or "img_url" not in row or "element" not in row:
            raise DataError(where, "not ShowUI metadata: expected the fields 'img_url' and 'element'")
        shot = episodes.screenshot(src.parent, "images", row["img_url"], where)
        for i, element in enumerate(row["element"]):
            yield _element(shot, element, f"{where} element {i}")


def _element(shot: Shot, element: Any, where: str) -> Step | Dropped:
    """A grounding element ``{instruction, bbox[, point][, data_type]}``; the point (ShowUI's) when given,
    else the box's center."""
    element = element if isinstance(element, dict) else {}
    box, instruction, point = element.get("bbox"), element.get("instruction"), element.get("point")
    categories = {"data_type": str(element["data_type"])} if element.get("data_type") else {}
    if not isinstance(instruction, str) or not instruction.strip():
        return Dropped(where, "no instruction")
    if not (isinstance(box, list) and len(box) == 4 and all(isinstance(v, (int, float)) for v in box)):
        return Dropped(where, f"bbox is not [x1, y1, x2, y2]: {box!r}")
    scale = (1.0, 1.0) if max(box) <= 1 else shot.size  # OS-Atlas and ShowUI write 0–1; pixels otherwise
    unit = (box[0] / scale[0], box[1] / scale[1], box[2] / scale[0], box[3] / scale[1])
    if not (0 <= unit[0] < unit[2] <= 1 and 0 <= unit[1] < unit[3] <= 1):
        return Dropped(where, f"bbox {box} is empty or outside the {shot.size[0]}×{shot.size[1]} image")
    if isinstance(point, list) and len(point) == 2 and max(point) <= 1:
        center = (float(point[0]), float(point[1]))
    else:
        center = ((unit[0] + unit[2]) / 2, (unit[1] + unit[3]) / 2)
    return Step(
        shot, instruction.strip(), Act("click", center), where, unit, grounding=True, categories=categories
    )
