"""GUI-Actor's grounding records (microsoft/GUI-Actor): ``image`` + ``conversations`` whose assistant turn
holds ``<ACTION_PLACEHOLDER>`` (or a pyautogui click, with ``recipient: os``) and ``bbox_gt`` ``[x1, y1, x2,
y2]`` in 0–1 of the image (on the turn or the record; pixels when a value is above 1). Read as plain Qwen
text, the model would learn to write the placeholder and the box would be lost: here the box is the
record's reference and the turn becomes the answer template's answer at the box's center.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..errors import DataError
from . import coordinates, templates
from .readers import refuse_video

ACTION_PLACEHOLDER = "<ACTION_PLACEHOLDER>"


def detected(row: Any) -> bool:
    """Whether a record is GUI-Actor's: a ``bbox_gt`` on the record or a turn, or ``<ACTION_PLACEHOLDER>``."""
    if not isinstance(row, dict) or not isinstance(row.get("conversations"), list):
        return False
    if "bbox_gt" in row:
        return True
    return any(
        isinstance(t, dict) and ("bbox_gt" in t or ACTION_PLACEHOLDER in str(t.get("value", "")))
        for t in row["conversations"]
    )


def read(row: dict, where: str, root: Path, coords: str, template: str) -> dict:
    """A GUI-Actor record as a chat row: its answer turn rendered in ``template`` at the center of
    ``bbox_gt``, which becomes the record's ``bbox`` in the answer's convention."""
    refuse_video(row, where)
    turns = row["conversations"]
    answer_at = _answer_turn(turns)
    if answer_at is None:
        raise DataError(where, "a GUI-Actor record needs an assistant (gpt) turn to answer")
    box = turns[answer_at].get("bbox_gt", row.get("bbox_gt"))
    if not (isinstance(box, list) and len(box) == 4 and all(isinstance(v, (int, float)) for v in box)):
        raise DataError(where, f"bbox_gt must be [x1, y1, x2, y2] (0–1 of the image), got {box!r}")
    images = row.get("image") or row.get("images") or []
    images = [images] if isinstance(images, str) else list(images)
    if len(images) != 1:
        raise DataError(where, f"a GUI-Actor record grounds on one image, it has {len(images)}")
    size = _size(root / images[0], where)
    source = "unit" if max(box) <= 1 else "pixels"
    problem = coordinates.out_of_range(box, source, size)
    if problem or box[0] > box[2] or box[1] > box[3]:
        raise DataError(where, f"bbox_gt {box} does not fit the {size[0]}×{size[1]} image ({problem})")
    chosen = templates.get(template)
    convention = chosen.answer_convention(coords)
    point = coordinates.convert_point(coordinates.center(box), source, convention, size)
    conversations = [dict(t) for t in turns]
    conversations[answer_at]["value"] = chosen.answer(point)
    has_system = any(t.get("from") == "system" for t in conversations if isinstance(t, dict))
    if chosen.system and not has_system:
        conversations.insert(0, {"from": "system", "value": chosen.system})
    record = {"conversations": conversations, "image": images}
    return {"record": record, "bbox": coordinates.convert_box(box, source, convention, size)}


def _answer_turn(turns: list) -> int | None:
    said = [i for i, t in enumerate(turns) if isinstance(t, dict) and t.get("from") in ("gpt", "assistant")]
    for i in said:
        if ACTION_PLACEHOLDER in str(turns[i].get("value", "")):
            return i
    for i in said:
        if "bbox_gt" in turns[i]:
            return i
    return said[-1] if said else None


def _size(path: Path, where: str) -> tuple[int, int]:
    from PIL import Image

    try:
        with Image.open(path) as image:
            return image.size
    except (OSError, ValueError) as e:
        raise DataError(where, f"cannot read image {path}: {e}") from None
