"""Aguvis stage 1 (grounding) and stage 2 (planning) data: ``image`` + ``conversations``, the assistant's
action a ``pyautogui.*`` or ``mobile.*`` call in 0–1 of the screenshot (``recipient: os``), stage 2's
reasoning in turns addressed to ``all``. A click with no reasoning and no previous actions is a grounding
element; everything else a navigation step. pyautogui's ``scroll(+n)`` scrolls up: the finger swipes down.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from pathlib import Path

from ..errors import DataError
from . import episodes
from .episodes import Act, Dropped, Step

_CALL = re.compile(r"((?:pyautogui|mobile)\.\w+|terminate|answer)\((.*)\)")


def read(src: Path) -> Iterator[Step | Dropped]:
    """The steps of the records at ``src`` (a JSON array, a JSONL file or a folder of them)."""
    for where, row in episodes.json_records(src):
        if not isinstance(row, dict) or "conversations" not in row or "image" not in row:
            raise DataError(where, "not an Aguvis record: expected the fields 'image' and 'conversations'")
        images = row["image"] if isinstance(row["image"], list) else [row["image"]]
        shot = episodes.screenshot(src.parent, "images", images[-1], where)
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
            act = _act(text)
            if isinstance(act, str):
                yield Dropped(f"{where} turn {i}", act)
                continue
            grounding = act.type == "click" and not (planning or "previous action" in instruction.lower())
            thought = "\n".join(thoughts) or None
            yield Step(shot, instruction, act, f"{where} turn {i}", grounding=grounding, thought=thought)
            thoughts = []


def _act(text: str) -> Act | str:
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
        return Act("swipe", tuple(start), direction=episodes.direction(tuple(start), tuple(end)))
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
