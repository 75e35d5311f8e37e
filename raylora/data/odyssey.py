"""GUI-Odyssey (OpenGVLab/GUI-Odyssey): one JSON per episode in ``annotations/`` — ``device_info{w, h}``,
``task_info{category, instruction, ...}``, ``steps[{step, screenshot, action, info, ps}]`` with points in
0–1000 — screenshots in ``screenshots/`` and the splits in ``splits/*.json`` (``{"train": [ids], "test":
[ids]}``). Actions: CLICK / LONG_PRESS (``info`` the point, or HOME / BACK), SCROLL (``info`` the finger's
start and end), TYPE (or TEXT; ``info`` the text), HOME, BACK, COMPLETE, IMPOSSIBLE.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ..errors import DataError
from . import episodes
from .episodes import Act, Dropped, Shot, Step


def read(src: Path, split: str | None, level: str) -> Iterator[Step | Dropped]:
    """The steps of the episodes at ``src`` (the data folder, ``annotations/`` or one episode file)."""
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
    keep = episodes.split_ids(base / "splits", "random_split.json", split)
    for file in files:
        if keep is not None and file.stem not in keep and file.name not in keep:
            continue
        episode = episodes.load_json(file)
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
            shot = episodes.screenshot(base, "screenshots", step.get("screenshot"), here)
            act = _act(step.get("action"), step.get("info"))
            if isinstance(act, str):
                yield Dropped(here, act)
                continue
            yield Step(shot, instruction, act, here, history=tuple(history), categories=categories)
            history.append((shot, act))


def _act(action: Any, info: Any) -> Act | str:
    points = _points(info)
    if action in ("CLICK", "LONG_PRESS"):
        if isinstance(info, str) and info.strip().upper() in ("HOME", "BACK", "ENTER"):
            return Act("system_button", button=info.strip().lower())
        if not points:
            return f"{action} without a point in info"
        return Act("click" if action == "CLICK" else "long_press", episodes.unit(points[0], 1000))
    if action == "SCROLL":
        if len(points) < 2:
            return "SCROLL without start and end points in info"
        start, end = episodes.unit(points[0], 1000), episodes.unit(points[1], 1000)
        return Act("swipe", start, direction=episodes.direction(start, end))
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
