"""The GUI datasets that come as episodes or element lists, read as their projects publish them, one
:class:`Step` at a time (points and boxes as 0–1 fractions of the screenshot). :mod:`.convert` writes them
as chat records.

    androidcontrol  GZIP TFRecord files of ``tf.train.Example`` episodes (google-research android_control):
                    ``episode_id``, ``goal``, ``screenshots`` (PNG bytes), ``screenshot_widths/heights``,
                    ``accessibility_trees`` (AndroidAccessibilityForest), ``actions`` (JSON, pixels; one
                    fewer than screenshots), ``step_instructions``; ``splits.json`` beside them
    gui-odyssey     one JSON per episode (OpenGVLab/GUI-Odyssey): ``device_info{w, h}``, ``task_info``,
                    ``steps[{step, screenshot, action, info, ps}]``, points in 0–1000; ``screenshots/`` and
                    ``splits/*.json`` beside ``annotations/``
    aguvis          Aguvis stage 1 (grounding) and stage 2 (planning): ``image`` + ``conversations``, the
                    assistant's ``pyautogui.*`` / ``mobile.*`` calls in 0–1 (``recipient: os``)
    os-atlas        OS-Atlas grounding: ``img_filename`` + ``elements[{instruction, bbox}]``, boxes in 0–1
                    (pixels when a value is above 1)
    showui          ShowUI's prepared metadata (AMEX and its own): ``img_url``, ``img_size``,
                    ``element[{instruction, bbox, point}]``, in 0–1

Swipe directions are the finger's (MAI-UI's ``swipe``): AndroidControl's ``scroll`` names the direction
the content scrolls (``down`` shows what is below: the finger swipes up) and pyautogui's ``scroll(+n)``
scrolls up (the finger swipes down).
"""

from __future__ import annotations

import ast
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import DataError
from . import tfrecord

NAMES = ("androidcontrol", "gui-odyssey", "aguvis", "os-atlas", "showui")
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


def read(name: str, src: Path, split: str | None = None, level: str = "high") -> Iterator[Step | Dropped]:
    """The steps of dataset ``name`` at ``src`` (a DataError naming the field expected when it is not)."""
    if not src.exists():
        raise DataError(str(src), "no such file or folder")
    if name == "androidcontrol":
        return _androidcontrol(src, split, level)
    if name == "gui-odyssey":
        return _gui_odyssey(src, split, level)
    if split is not None:
        raise DataError("--split", f"{name} has no split files; convert the split's own file")
    if level != "high":
        raise DataError("--level", f"{name} has one instruction per record (level high only)")
    return {"aguvis": _aguvis, "os-atlas": _os_atlas, "showui": _showui}[name](src)


# -- AndroidControl ----------------------------------------------------------------------------------

_ANDROIDCONTROL = ("goal", "screenshots", "screenshot_widths", "screenshot_heights", "actions")


def _androidcontrol(src: Path, split: str | None, level: str) -> Iterator[Step | Dropped]:
    files = [src]
    if src.is_dir():
        files = sorted(p for p in src.iterdir() if p.is_file() and p.suffix != ".json")
        shards = [p for p in files if p.name.startswith("android_control")]  # the published shard names
        files = shards or files
        if not files:
            raise DataError(str(src), "no TFRecord files (expected android_control-*-of-*)")
    keep = _split_ids(src if src.is_dir() else src.parent, "splits.json", split)
    for file in files:
        for number, data in enumerate(tfrecord.records(file), start=1):
            where = f"{file}:episode {number}"
            episode = tfrecord.example(data)
            missing = [k for k in _ANDROIDCONTROL if k not in episode]
            if missing:
                raise DataError(where, f"not an AndroidControl episode: expected the feature {missing[0]!r}")
            ids = episode.get("episode_id") or [number]
            if keep is not None and str(ids[0]) not in keep:
                continue
            yield from _androidcontrol_steps(episode, str(ids[0]), where, level)


def _androidcontrol_steps(episode: dict, episode_id: str, where: str, level: str) -> Iterator[Step | Dropped]:
    shots = [
        Shot(f"androidcontrol_{episode_id}_{i}.png", (int(w), int(h)), png)
        for i, (png, w, h) in enumerate(
            zip(
                episode["screenshots"],
                episode["screenshot_widths"],
                episode["screenshot_heights"],
                strict=False,
            )
        )
    ]
    actions, steps = episode["actions"], episode.get("step_instructions", [])
    trees = episode.get("accessibility_trees", [])
    if len(actions) > len(shots):
        yield Dropped(where, f"{len(actions)} actions but {len(shots)} screenshots")
        return
    goal = episode["goal"][0].decode("utf-8")
    history: list[tuple[Shot, Act]] = []
    for i, raw in enumerate(actions):
        here = f"{where} step {i}"
        act = _androidcontrol_act(json.loads(raw), shots[i].size)
        if isinstance(act, str):
            yield Dropped(here, act)
            continue
        instruction = goal
        if level == "low":
            if i >= len(steps):
                yield Dropped(here, "no step instruction")
                continue
            instruction = f"{goal}\nStep: {steps[i].decode('utf-8')}"
        box = _element_box(trees[i], act.point, shots[i].size) if act.point and i < len(trees) else None
        yield Step(shots[i], instruction, act, here, box, history=tuple(history))
        history.append((shots[i], act))


def _androidcontrol_act(action: dict, size: tuple[int, int]) -> Act | str:
    kind = action.get("action_type")
    width, height = size
    point = (action["x"] / width, action["y"] / height) if "x" in action and "y" in action else None
    if kind in ("click", "long_press"):
        return Act(kind, point) if point else f"{kind} without x and y"
    if kind in ("type", "input_text"):
        return Act("type", text=str(action.get("text", "")))
    if kind == "scroll":
        opposite = {"up": "down", "down": "up", "left": "right", "right": "left"}
        direction = opposite.get(action.get("direction"))
        return (
            Act("swipe", direction=direction)
            if direction
            else f"scroll direction {action.get('direction')!r}"
        )
    if kind == "open_app":
        return Act("open", text=str(action.get("app_name", "")))
    if kind in ("navigate_home", "navigate_back"):
        return Act("system_button", button=kind.removeprefix("navigate_"))
    if kind == "wait":
        return Act("wait")
    return f"unknown action_type {kind!r}"


def _element_box(forest: bytes, point: Point, size: tuple[int, int]):
    """The smallest visible accessibility node whose bounds hold the point (AndroidAccessibilityForest:
    windows = 1 → tree = 11 → nodes = 1 → bounds_in_screen = 2 {left, top, right, bottom},
    is_visible_to_user = 23), as 0–1 fractions; None when no node holds it."""
    x, y = point[0] * size[0], point[1] * size[1]
    best = None
    for window_field, window in tfrecord.fields(forest):
        if window_field != 1:
            continue
        for tree_field, tree in tfrecord.fields(window):
            if tree_field != 11:
                continue
            for node_field, node in tfrecord.fields(tree):
                if node_field != 1:
                    continue
                box, visible = _node(node)
                if box and visible and box[0] <= x <= box[2] and box[1] <= y <= box[3]:
                    area = (box[2] - box[0]) * (box[3] - box[1])
                    if best is None or area < best[0]:
                        best = (area, box)
    if best is None:
        return None
    left, top, right, bottom = best[1]
    w, h = size
    return (max(left, 0) / w, max(top, 0) / h, min(right, w) / w, min(bottom, h) / h)


def _node(node: bytes) -> tuple[list[int] | None, bool]:
    box, visible = None, False
    for key, value in tfrecord.fields(node):
        if key == 2:
            rect = dict.fromkeys((1, 2, 3, 4), 0)
            rect.update({k: tfrecord._signed(v) for k, v in tfrecord.fields(value)})
            box = [rect[1], rect[2], rect[3], rect[4]]
        elif key == 23:
            visible = bool(value)
    return box, visible


# -- GUI-Odyssey -------------------------------------------------------------------------------------


def _gui_odyssey(src: Path, split: str | None, level: str) -> Iterator[Step | Dropped]:
    if level != "high":
        raise DataError("--level", "GUI-Odyssey episodes carry one instruction per episode (level high only)")
    if src.is_dir():
        folder = src / "annotations" if (src / "annotations").is_dir() else src
        files = sorted(folder.glob("*.json"))
    else:
        folder, files = src.parent, [src]
    if not files:
        raise DataError(str(src), "no episode JSON files (expected annotations/*.json)")
    base = folder.parent if folder.name == "annotations" else folder
    keep = _split_ids(base / "splits", "random_split.json", split)
    for file in files:
        if keep is not None and file.stem not in keep and file.name not in keep:
            continue
        episode = _json(file)
        where = str(file)
        for key in ("device_info", "steps"):
            if not isinstance(episode, dict) or key not in episode:
                raise DataError(where, f"not a GUI-Odyssey episode: expected the field {key!r}")
        task = episode.get("task_info") or {}
        instruction = task.get("instruction") or task.get("task")
        if not isinstance(instruction, str):
            raise DataError(where, "not a GUI-Odyssey episode: expected task_info.instruction")
        categories = {"category": str(task["category"])} if task.get("category") else {}
        history: list[tuple[Shot, Act]] = []
        for i, step in enumerate(episode["steps"]):
            here = f"{where} step {i}"
            shot = _shot(base, "screenshots", step.get("screenshot"), here)
            act = _odyssey_act(step.get("action"), step.get("info"))
            if isinstance(act, str):
                yield Dropped(here, act)
                continue
            yield Step(shot, instruction, act, here, history=tuple(history), categories=categories)
            history.append((shot, act))


def _odyssey_act(action: Any, info: Any) -> Act | str:
    points = _points(info)
    if action in ("CLICK", "LONG_PRESS"):
        if isinstance(info, str) and info.strip().upper() in ("HOME", "BACK", "ENTER"):
            return Act("system_button", button=info.strip().lower())
        if not points:
            return f"{action} without a point in info"
        return Act("click" if action == "CLICK" else "long_press", _unit(points[0], 1000))
    if action == "SCROLL":
        if len(points) < 2:
            return "SCROLL without start and end points in info"
        start, end = _unit(points[0], 1000), _unit(points[1], 1000)
        return Act("swipe", start, direction=_direction(start, end))
    if action in ("TYPE", "TEXT"):
        return Act("type", text=info if isinstance(info, str) else "")
    if action in ("HOME", "BACK"):
        return Act("system_button", button=action.lower())
    if action in ("COMPLETE", "IMPOSSIBLE"):
        return Act("terminate", status="success" if action == "COMPLETE" else "fail")
    return f"unknown action {action!r}"


def _points(info: Any) -> list[list[float]]:
    if isinstance(info, str):
        try:
            info = ast.literal_eval(info) if info.strip().startswith(("[", "(")) else info
        except (ValueError, SyntaxError):
            return []
    if isinstance(info, (list, tuple)) and len(info) == 2 and all(isinstance(v, (int, float)) for v in info):
        return [list(info)]
    if isinstance(info, (list, tuple)):
        return [list(p) for p in info if isinstance(p, (list, tuple)) and len(p) == 2]
    return []


# -- Aguvis ------------------------------------------------------------------------------------------

_CALL = re.compile(r"((?:pyautogui|mobile)\.\w+|terminate|answer)\((.*)\)")


def _aguvis(src: Path) -> Iterator[Step | Dropped]:
    for where, row in _json_records(src):
        if not isinstance(row, dict) or "conversations" not in row or "image" not in row:
            raise DataError(where, "not an Aguvis record: expected the fields 'image' and 'conversations'")
        images = row["image"] if isinstance(row["image"], list) else [row["image"]]
        shot = _shot(src.parent, "images", images[-1], where)
        turns = row["conversations"]
        planning = any(t.get("recipient") == "all" for t in turns if isinstance(t, dict))
        instruction, thoughts = "", []
        for i, turn in enumerate(turns):
            said, text = turn.get("from"), str(turn.get("value", ""))
            if said in ("human", "user"):
                instruction, thoughts = text.replace("<image>", "").strip(), []
                continue
            if said in ("gpt", "assistant") and turn.get("recipient") == "all":
                thoughts.append(text.strip())
                continue
            if said not in ("gpt", "assistant") or turn.get("recipient", "os") != "os":
                continue
            act = _aguvis_act(text)
            if isinstance(act, str):
                yield Dropped(f"{where} turn {i}", act)
                continue
            grounding = act.type == "click" and not (planning or "previous action" in instruction.lower())
            thought = "\n".join(thoughts) or None
            yield Step(shot, instruction, act, f"{where} turn {i}", grounding=grounding, thought=thought)
            thoughts = []


def _aguvis_act(text: str) -> Act | str:
    # The first line with a call ("# comment" lines and a thought before it are not the action).
    match = next((m for m in map(_CALL.search, text.splitlines()) if m), None)
    if not match:
        return f"no pyautogui/mobile call in {text[:40]!r}"
    name, body = match.group(1), match.group(2)
    try:
        call = ast.parse(f"f({body})", mode="eval").body
        args = [ast.literal_eval(a) for a in call.args]
        kw = {k.arg: ast.literal_eval(k.value) for k in call.keywords}
    except (SyntaxError, ValueError):
        return f"unreadable call {text[:40]!r}"
    xy = (kw.get("x", args[0] if args else None), kw.get("y", args[1] if len(args) > 1 else None))
    point = (float(xy[0]), float(xy[1])) if all(isinstance(v, (int, float)) for v in xy) else None
    short = name.split(".")[-1]
    kinds = {
        "click": "click",
        "doubleClick": "double_click",
        "rightClick": "right_click",
        "long_press": "long_press",
    }
    if short in kinds:
        return Act(kinds[short], point) if point else f"{name} without x and y"
    if short in ("write", "typewrite", "type"):
        return Act("type", text=str(kw.get("message", kw.get("text", args[0] if args else ""))))
    if short in ("press", "hotkey"):
        keys = kw.get("keys", args)
        keys = [keys] if isinstance(keys, str) else list(keys)
        if len(keys) == 1 and str(keys[0]).lower() in ("enter", "home", "back"):
            return Act("system_button", button=str(keys[0]).lower())
        return Act("hotkey", text="+".join(str(k).lower() for k in keys))
    if short in ("scroll", "hscroll"):
        amount = kw.get("page", kw.get("clicks", args[0] if args else 0))
        axis = ("down", "up") if short == "scroll" else ("right", "left")
        return Act("swipe", direction=axis[0] if amount > 0 else axis[1])
    if short == "swipe":
        start, end = kw.get("from_coord"), kw.get("to_coord")
        if not (isinstance(start, (list, tuple)) and isinstance(end, (list, tuple))):
            return "swipe without from_coord and to_coord"
        return Act("swipe", tuple(start), direction=_direction(tuple(start), tuple(end)))
    if short in ("home", "back"):
        return Act("system_button", button=short)
    if short == "open_app":
        return Act("open", text=str(kw.get("app_name", args[0] if args else "")))
    if short == "wait":
        return Act("wait")
    if short == "terminate":
        return Act("terminate", status=str(kw.get("status", args[0] if args else "success")))
    if short == "answer":
        return Act("answer", text=str(kw.get("text", args[0] if args else "")))
    return f"{name} is not in the action space (click, type, swipe, press, ...)"


# -- grounding element lists -------------------------------------------------------------------------


def _os_atlas(src: Path) -> Iterator[Step | Dropped]:
    for where, row in _json_records(src):
        if not isinstance(row, dict) or "img_filename" not in row or "elements" not in row:
            raise DataError(
                where, "not an OS-Atlas element list: expected the fields 'img_filename' and 'elements'"
            )
        shot = _shot(src.parent, "images", row["img_filename"], where)
        for i, element in enumerate(row["elements"]):
            yield _element(shot, element, f"{where} element {i}")


def _showui(src: Path) -> Iterator[Step | Dropped]:
    for where, row in _json_records(src):
        if not isinstance(row, dict) or "img_url" not in row or "element" not in row:
            raise DataError(where, "not ShowUI metadata: expected the fields 'img_url' and 'element'")
        shot = _shot(src.parent, "images", row["img_url"], where)
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


# -- shared ------------------------------------------------------------------------------------------


def _shot(base: Path, folder: str, name: Any, where: str) -> Shot:
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


def _json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as e:
        raise DataError(str(path), f"not valid JSON ({e})") from None


def _json_records(src: Path) -> Iterator[tuple[str, Any]]:
    """A JSON array's records (parsed whole: text, not screenshots) or a JSONL file's, line by line."""
    files = sorted(src.glob("*.json*")) if src.is_dir() else [src]
    for file in files:
        if file.suffix == ".jsonl":
            with file.open(encoding="utf-8") as f:
                for number, line in enumerate(f, start=1):
                    if line.strip():
                        yield f"{file}:{number}", json.loads(line)
            continue
        records = _json(file)
        if not isinstance(records, list):
            raise DataError(str(file), "expected a JSON array of records")
        for index, row in enumerate(records):
            yield f"{file}[{index}]", row


def _split_ids(folder: Path, default: str, split: str | None) -> set[str] | None:
    """The episode ids of ``split`` (``NAME`` in ``folder/default``, or ``FILE.json:NAME``)."""
    if split is None:
        return None
    file, _, name = split.rpartition(":") if ".json:" in split else ("", "", split)
    path = Path(file) if file else folder / default
    table = _json(path) if path.is_file() else None
    if not isinstance(table, dict):
        raise DataError("--split", f"no split file {path} (give FILE.json:NAME)")
    if name not in table:
        raise DataError("--split", f"{path} has no split {name!r} (splits: {', '.join(sorted(table))})")
    return {str(Path(str(i)).stem) if str(i).endswith(".json") else str(i) for i in table[name]}


def _unit(point: list[float], extent: float) -> Point:
    return point[0] / extent, point[1] / extent


def _direction(start: Point, end: Point) -> str:
    dx, dy = end[0] - start[0], end[1] - start[1]
    if abs(dx) > abs(dy):
        return "right" if dx > 0 else "left"
    return "down" if dy > 0 else "up"
