"""Answer templates for grounding records: how an instruction about a screenshot becomes a prompt, and a
target box becomes the supervised answer (:mod:`.actions` reads it back, as it reads a model's output).

    click     the user turn is the instruction; the answer ``click(x, y)`` in ``data.coordinates``
    qwen3vl   Qwen3-VL grounding: the answer ``{"point_2d": [x, y]}`` in 0–1000
    mai-ui    MAI-UI grounding: its system prompt, and ``<answer>{"coordinate": [x, y]}</answer>`` in 0–999
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from . import coordinates

MAI_UI_SYSTEM = (
    "You are a GUI grounding agent. Given a screenshot and an instruction, locate the UI element the "
    'instruction refers to and answer with its point as <answer>{"coordinate": [x, y]}</answer>, x and '
    "y in 0-999 relative to the screenshot's width and height."
)


@dataclass(frozen=True)
class Template:
    """A grounding prompt and answer style."""

    name: str
    convention: str | None  # the answer's coordinate convention; None: the data's own (data.coordinates)
    system: str | None = None

    def answer(self, point: tuple[float, float]) -> str:
        """The supervised answer for a target point already in :meth:`answer_convention`."""
        x, y = point
        if self.name == "qwen3vl":
            return json.dumps({"point_2d": [x, y]})
        if self.name == "mai-ui":
            return "<answer>" + json.dumps({"coordinate": [x, y]}) + "</answer>"
        return f"click({_number(x)}, {_number(y)})"

    def answer_convention(self, data_coordinates: str) -> str:
        """The convention the answer (and the record's target box) is written in."""
        return self.convention or data_coordinates


TEMPLATES: dict[str, Template] = {
    "click": Template("click", None),
    "qwen3vl": Template("qwen3vl", "qwen3vl"),
    "mai-ui": Template("mai-ui", "mai-ui", MAI_UI_SYSTEM),
}
NAMES = tuple(TEMPLATES)


def get(name: str) -> Template:
    """The template called ``name`` (a ValueError naming the known ones otherwise)."""
    try:
        return TEMPLATES[name]
    except KeyError:
        raise ValueError(f"unknown answer template {name!r} (known: {', '.join(NAMES)})") from None


def grounding_row(
    image, instruction: str, box_pixels, size: coordinates.Size, template: str, data_coordinates: str
) -> dict:
    """A chat row (the ``chat`` format) asking for ``instruction`` on ``image``, answered at the center of
    ``box_pixels`` (``[x1, y1, x2, y2]`` pixels of the original image); its ``bbox`` in the answer's
    convention, for click accuracy."""
    chosen = get(template)
    convention = chosen.answer_convention(data_coordinates)
    box = coordinates.convert_box(box_pixels, "pixels", convention, size)
    point = coordinates.convert_point(coordinates.center(box_pixels), "pixels", convention, size)
    messages = []
    if chosen.system:
        messages.append({"role": "system", "content": [{"type": "text", "text": chosen.system}]})
    messages.append(
        {
            "role": "user",
            "content": [{"type": "image", "image": image}, {"type": "text", "text": instruction}],
        }
    )
    messages.append({"role": "assistant", "content": [{"type": "text", "text": chosen.answer(point)}]})
    return {"messages": messages, "bbox": box}


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:g}"
