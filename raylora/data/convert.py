"""``raylora data convert``: the datasets of :mod:`.episodes` written as chat records (JSONL), one per step
or element, in an answer template and coordinate convention, streamed.

    grounding step   [system] · user [screenshot, instruction] · assistant: the template's answer
                     (``click(x, y)``, ``{"point_2d": ...}``, MAI-UI ``<answer>``), ``bbox`` the element
    navigation step  system (the action space) · user [the last ``history`` screenshots, the previous
                     actions, the screenshot, the task] · assistant ``<tool_call>{"name": "mobile_use",
                     "arguments": {"action": ...}}</tool_call>`` (MAI-UI's action space, which
                     :mod:`.actions` reads), after ``<thinking>…</thinking>`` when the dataset has the
                     reasoning (Aguvis stage 2), points in the answer convention; ``bbox`` the target
                     element when the dataset has one (AndroidControl's accessibility tree)

The current screenshot is always the last image. Screenshots given as bytes (AndroidControl) are written
once beside the output, in ``OUT_images/``; paths in the records are relative to the output file.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import DataError
from . import aguvis, androidcontrol, coordinates, elements, episodes, odyssey, templates

NAMES = ("androidcontrol", "gui-odyssey", "aguvis", "os-atlas", "showui")

HISTORY = {"mai-ui": 3}
"""Screenshots of earlier steps a navigation record shows by default, per template (MAI-UI's agent
keeps the last few; the others take the current screenshot alone)."""


@dataclass
class Report:
    """What a conversion wrote."""

    out: Path
    records: int = 0
    screenshots: int = 0
    dropped: Counter = field(default_factory=Counter)
    actions: Counter = field(default_factory=Counter)

    def lines(self) -> list[str]:
        """The summary ``raylora data convert`` prints."""
        out = [f"wrote {self.records} records to {self.out}"]
        if self.screenshots:
            out[0] += f" ({self.screenshots} screenshots in {_images_dir(self.out).name}/)"
        kept = ", ".join(f"{k} {n}" for k, n in self.actions.most_common())
        out.append(f"actions: {kept or 'none'}")
        lost = sum(self.dropped.values())
        out.append(f"dropped {lost}" + (": " + "; ".join(f"{r} ×{n}" for r, n in self.dropped.most_common())))
        return out


def convert(
    src: Path,
    name: str,
    out: Path,
    template: str = "click",
    data_coordinates: str = "qwen3vl",
    history: int | None = None,
    split: str | None = None,
    level: str = "high",
) -> Report:
    """Convert dataset ``name`` at ``src`` into ``out`` (written whole or not at all)."""
    if name not in NAMES:
        raise DataError("--from", f"unknown dataset {name!r} (known: {', '.join(NAMES)})")
    if level not in ("high", "low"):
        raise DataError("--level", f"must be high or low, got {level!r}")
    chosen = templates.get(template)
    convention = chosen.answer_convention(coordinates.get(data_coordinates).name)
    if coordinates.get(convention).resized:
        raise DataError(
            "--coordinates", "resized-pixels depend on the processor; pick pixels or a relative one"
        )
    keep = HISTORY.get(template, 0) if history is None else history
    report = Report(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    try:
        with tmp.open("w", encoding="utf-8") as f:
            for step in steps(name, src, split, level):
                if isinstance(step, episodes.Dropped):
                    report.dropped[step.reason] += 1
                    continue
                row = record(step, chosen, convention, keep, out, report)
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
                report.records += 1
                report.actions[step.act.type] += 1
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    return report


def steps(
    name: str, src: Path, split: str | None = None, level: str = "high"
) -> Iterator[episodes.Step | episodes.Dropped]:
    """The steps of dataset ``name`` at ``src`` (a DataError naming the field expected when it is not)."""
    if not src.exists():
        raise DataError(str(src), "no such file or folder")
    if name == "androidcontrol":
        return androidcontrol.read(src, split, level)
    if name == "gui-odyssey":
        return odyssey.read(src, split, level)
    if split is not None:
        raise DataError("--split", f"{name} has no split files; convert the split's own file")
    if level != "high":
        raise DataError("--level", f"{name} has one instruction per record (level high only)")
    return {"aguvis": aguvis.read, "os-atlas": elements.os_atlas, "showui": elements.showui}[name](src)


def record(
    step: episodes.Step, chosen: templates.Template, convention: str, keep: int, out: Path, report
) -> dict:
    """One step as a chat record (the module docstring's layouts)."""
    size = step.shot.size
    image = _image(step.shot, out, report)
    if step.grounding:
        point = coordinates.from_unit(step.act.point, convention, size)
        messages = [{"role": "system", "content": chosen.system}] if chosen.system else []
        messages.append({"role": "user", "content": [_item(image), _text(step.instruction)]})
        answer = chosen.answer(point)
    else:
        earlier = step.history[-keep:] if keep else ()
        content = []
        if earlier:
            content.append(_text("Previous screenshots:"))
            content += [_item(_image(shot, out, report)) for shot, _ in earlier]
        done = [json.dumps(_arguments(act, convention, size)) for _, act in step.history]
        if done:
            content.append(
                _text("Previous actions:\n" + "\n".join(f"{i}. {a}" for i, a in enumerate(done, 1)))
            )
        content += [_text("Current screenshot:"), _item(image), _text(f"Task: {step.instruction}")]
        messages = [{"role": "system", "content": _system(convention)}, {"role": "user", "content": content}]
        answer = tool_call(step.act, convention, size)
        if step.thought:  # MAI-UI's reasoning before its action
            answer = f"<thinking>\n{step.thought}\n</thinking>\n{answer}"
    messages.append({"role": "assistant", "content": answer})
    row: dict = {"messages": messages, "id": step.where}
    if step.box is not None:
        row["bbox"] = [
            *coordinates.from_unit(step.box[:2], convention, size),
            *coordinates.from_unit(step.box[2:], convention, size),
        ]
    if step.categories:
        row["categories"] = step.categories
    return row


def tool_call(act: episodes.Act, convention: str, size: tuple[int, int]) -> str:
    """An action as MAI-UI's ``mobile_use`` tool call, its points in ``convention``."""
    body = {"name": "mobile_use", "arguments": _arguments(act, convention, size)}
    return f"<tool_call>\n{json.dumps(body, ensure_ascii=False)}\n</tool_call>"


def _arguments(act: episodes.Act, convention: str, size: tuple[int, int]) -> dict:
    args: dict = {"action": act.type}
    if act.point is not None:
        key = "start_coordinate" if act.type == "drag" else "coordinate"
        args[key] = list(coordinates.from_unit(act.point, convention, size))
    if act.end is not None:
        args["end_coordinate"] = list(coordinates.from_unit(act.end, convention, size))
    for key in ("direction", "text", "button", "status"):
        if getattr(act, key) is not None:
            args[key] = getattr(act, key)
    return args


def _system(convention: str) -> str:
    extent = coordinates.get(convention).relative
    space = (
        f"0-{extent:g} relative to the screenshot's width and height"
        if extent
        else "pixels of the screenshot"
    )
    return (
        "You are a GUI agent operating a device. Given the task, the previous actions and the current "
        'screenshot, answer with the next action as <tool_call>{"name": "mobile_use", "arguments": '
        '{"action": ...}}</tool_call>. Actions: click, long_press (coordinate), type (text), swipe '
        "(direction, optional coordinate), open (text), drag (start_coordinate, end_coordinate), "
        f"system_button (button), wait, terminate (status), answer (text). Coordinates are x, y in {space}."
    )


def _image(shot: episodes.Shot, out: Path, report) -> str:
    """The screenshot's path relative to ``out``'s folder, written first when it comes as bytes."""
    if shot.data is None:
        return os.path.relpath(shot.name, out.parent)
    target = _images_dir(out) / shot.name
    if not target.is_file():
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(shot.data)
        report.screenshots += 1
    return os.path.relpath(target, out.parent)


def _images_dir(out: Path) -> Path:
    return out.parent / f"{out.stem}_images"


def _item(image: str) -> dict:
    return {"type": "image", "image": image}


def _text(text: str) -> dict:
    return {"type": "text", "text": text}
