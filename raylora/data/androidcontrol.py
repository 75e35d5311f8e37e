"""AndroidControl (google-research android_control), read without TensorFlow: GZIP TFRecord files of
``tf.train.Example`` episodes with ``episode_id``, ``goal``, ``screenshots`` (PNG bytes),
``screenshot_widths`` / ``screenshot_heights``, ``accessibility_trees`` (android_env's
AndroidAccessibilityForest), ``actions`` (JSON, pixels; one fewer than the screenshots) and
``step_instructions``; the episode ids of each split in ``splits.json`` beside them.

A click's reference box is the smallest visible accessibility node that holds it (the element the
AndroidControl protocol scores a click against). ``scroll`` names the direction the content scrolls: the
finger swipes the other way.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

from ..errors import DataError
from . import episodes, tfrecord
from .episodes import Act, Dropped, Point, Shot, Step

_ANDROIDCONTROL = ("goal", "screenshots", "screenshot_widths", "screenshot_heights", "actions")


def read(src: Path, split: str | None, level: str) -> Iterator[Step | Dropped]:
    """The steps of the episodes at ``src`` (a shard or a folder of them), of ``split`` when given."""
    files = [src]
    if src.is_dir():
        files = sorted(p for p in src.iterdir() if p.is_file() and p.suffix != ".json")
        shards = [p for p in files if p.name.startswith("android_control")]  # the published shard names
        files = shards or files
        if not files:
            raise DataError(str(src), "no TFRecord files (expected android_control-*-of-*)")
    keep = episodes.split_ids(src if src.is_dir() else src.parent, "splits.json", split)
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
            yield from _steps(episode, str(ids[0]), where, level)


def _steps(episode: dict, episode_id: str, where: str, level: str) -> Iterator[Step | Dropped]:
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
        act = _act(json.loads(raw), shots[i].size)
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


def _act(action: dict, size: tuple[int, int]) -> Act | str:
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
            rect.update({k: tfrecord.signed(v) for k, v in tfrecord.fields(value)})
            box = [rect[1], rect[2], rect[3], rect[4]]
        elif key == 23:
            visible = bool(value)
    return box, visible
