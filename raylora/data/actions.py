"""What a GUI model's output means: its text parsed into one :class:`Action` (pure Python, no torch).

Formats read, tried in this order (the first that matches wins):

    mai-ui-nav  ``[<thinking>…</thinking>] <tool_call>{"name": "mobile_use", "arguments": {"action": …}}
                </tool_call>`` over MAI-UI's action space: click, long_press (``coordinate``), type
                (``text``), swipe (``direction``, optional ``coordinate``), open (``text``), drag
                (``start_coordinate``, ``end_coordinate``), system_button (``button``), wait, terminate
                (``status``), answer (``text``) — 0–999
    mai-ui      MAI-UI grounding ``[<grounding_think>…</grounding_think>] <answer>{"coordinate": [x, y]}
                </answer>`` — 0–999
    qwen3vl     Qwen3-VL JSON ``{"point_2d": [x, y]}`` or ``{"bbox_2d": [x1, y1, x2, y2]}`` (its center),
                bare, in a list (the first element with a point or box), or in a ```json fence — 0–1000
    ui-tars     UI-TARS ``click(start_box='(x,y)')`` (also ``'<|box_start|>(x,y)<|box_end|>'``,
                ``'[x1, y1, x2, y2]'``, ``point='<point>x y</point>'``) over its action space (click,
                left_double, right_single, long_press, drag, type, hotkey, scroll, wait, finished,
                press_home, press_back, open_app), and a bare ``<|box_start|>(x,y)<|box_end|>`` (a box
                ``(x1,y1),(x2,y2)`` is its center)
    pyautogui   ``pyautogui.click(x=…, y=…)`` (or positional), doubleClick, rightClick, write/typewrite,
                press, hotkey, scroll, dragTo
    click       the ``click`` template's ``click(x, y)``

Output that matches none of these is a **format error** (:func:`parse` returns None): every accuracy counts
it as a miss, and scoring reports it on its own.

Coordinates. An :class:`Action` keeps the numbers the model wrote and the convention its format fixes
(``native``): 0–999 for MAI-UI's two formats, 0–1000 for Qwen3-VL's JSON; ``click(x, y)``, pyautogui and
UI-TARS (0–1000 in v1, pixels in 1.5) fix none. :func:`in_convention` reads a point in the data's answer
convention (``data.template`` over ``data.coordinates``, see :mod:`.coordinates`) by these rules:

1. an output written in the **same format as the reference answer** is read in the answer convention — the
   model learned the data's convention, whatever its format's origin;
2. an output in **another format that fixes a convention** is converted from that convention (a base
   Qwen3-VL answering ``point_2d`` in 0–1000 on data written in MAI-UI's 0–999);
3. an output in a format that fixes none is read in the answer convention.

A conversion to or from ``pixels`` needs the image size; one involving ``resized-pixels`` (or pixels with no
size known) is not made, and the numbers are read in the answer convention as written.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, replace

from . import coordinates

Point = tuple[float, float]

GROUNDING_FORMATS = ("mai-ui", "qwen3vl", "click")
"""Formats that answer a point only; a reference in any other format is a navigation step."""
NATIVE = {"mai-ui-nav": "mai-ui", "mai-ui": "mai-ui", "qwen3vl": "qwen3vl"}
"""The convention a format fixes (formats absent here fix none)."""


@dataclass(frozen=True)
class Action:
    """One parsed action: its ``type`` (MAI-UI's names where the formats agree), arguments, and the
    ``format`` it was written in. Points are as written (see :func:`in_convention`)."""

    type: str
    format: str
    point: Point | None = None
    end: Point | None = None
    direction: str | None = None
    text: str | None = None
    button: str | None = None
    status: str | None = None

    @property
    def native(self) -> str | None:
        """The coordinate convention this action's format fixes, or None."""
        return NATIVE.get(self.format)

    @property
    def navigation(self) -> bool:
        """Whether the format is an agent's action format (not a grounding answer)."""
        return self.format not in GROUNDING_FORMATS


def parse(text: str) -> Action | None:
    """The action ``text`` names, in any format above; None is a format error."""
    if not isinstance(text, str):
        return None
    for parser in (_mai_ui_nav, _mai_ui_answer, _qwen3vl, _ui_tars, _box_tokens, _pyautogui, _click):
        action = parser(text)
        if action is not None:
            return action
    return None


def in_convention(
    action: Action,
    answer_convention: str,
    reference_format: str | None = None,
    size: coordinates.Size | None = None,
) -> Action:
    """``action`` with its points in ``answer_convention`` (the rules in the module docstring)."""
    src = action.native
    if src is None or src == answer_convention or action.format == reference_format:
        return action
    if not _convertible(src, answer_convention, size):
        return action
    size = size or (1, 1)

    def convert(point: Point | None) -> Point | None:
        if point is None:
            return None
        x, y = coordinates.to_unit(point, src, size)
        ex, ey = coordinates.get(answer_convention).extent(size, None)
        return x * ex, y * ey  # unrounded: rounding could move a point across a box edge

    return replace(action, point=convert(action.point), end=convert(action.end))


def _convertible(src: str, dst: str, size) -> bool:
    conventions = (coordinates.get(src), coordinates.get(dst))
    if any(c.resized for c in conventions):
        return False
    return all(c.relative is not None for c in conventions) or size is not None


# -- formats -----------------------------------------------------------------------------------------

_NUM = r"(-?\d+(?:\.\d+)?)"
_TOOL_CALL = re.compile(r"<tool_call>\s*(.*?)\s*(?:</tool_call>|$)", re.S)
_ANSWER = re.compile(r"<answer>\s*(.*?)\s*(?:</answer>|$)", re.S)
_FENCE = re.compile(r"```(?:json)?\s*(.*?)```", re.S)
_POINT_KEY = re.compile(rf'"point_2d"\s*:\s*\[\s*{_NUM}\s*,\s*{_NUM}\s*\]')
_BOX_KEY = re.compile(rf'"bbox_2d"\s*:\s*\[\s*{_NUM}\s*,\s*{_NUM}\s*,\s*{_NUM}\s*,\s*{_NUM}\s*\]')
_CLICK = re.compile(rf"(?<![\w.])click\(\s*{_NUM}\s*,\s*{_NUM}\s*\)")
_UI_TARS_CALL = re.compile(
    r"(?<![\w.])(click|left_single|left_double|right_single|long_press|drag|select|type|hotkey|scroll|"
    r"wait|finished|call_user|press_home|press_back|open_app)\((.*?)\)(?=\s|$)",
    re.S,
)
_KWARG = re.compile(r"(\w+)\s*=\s*(['\"])(.*?)(?<!\\)\2", re.S)
_BOX_TOKENS = re.compile(
    rf"<\|box_start\|>\s*\(\s*{_NUM}\s*,\s*{_NUM}\s*\)(?:\s*,\s*\(\s*{_NUM}\s*,\s*{_NUM}\s*\))?\s*<\|box_end\|>"
)
_PYAUTOGUI = re.compile(r"pyautogui\.(\w+)\((.*?)\)", re.S)

MAI_UI_TYPES = (
    "click",
    "long_press",
    "type",
    "swipe",
    "open",
    "drag",
    "system_button",
    "wait",
    "terminate",
    "answer",
)


def _mai_ui_nav(text: str) -> Action | None:
    match = _TOOL_CALL.search(text)
    if not match:
        return None
    call = _json(match.group(1))
    if not isinstance(call, dict):
        return None
    args = call.get("arguments", call)
    if isinstance(args, str):
        args = _json(args)
    if not isinstance(args, dict) or not isinstance(args.get("action"), str):
        return None
    kind = args["action"].strip().lower()
    action = Action(
        kind,
        "mai-ui-nav",
        point=_point(args.get("coordinate")),
        direction=_lower(args.get("direction")),
        text=_str(args.get("text")),
        button=_lower(args.get("button")),
        status=_lower(args.get("status")),
    )
    if kind == "drag":
        action = replace(
            action, point=_point(args.get("start_coordinate")), end=_point(args.get("end_coordinate"))
        )
    if kind in ("click", "long_press", "double_click") and action.point is None:
        return None  # a click with nowhere to click is no action
    return action


def _mai_ui_answer(text: str) -> Action | None:
    match = _ANSWER.search(text)
    if not match:
        return None
    value = _json(match.group(1))
    point = _point(value.get("coordinate")) if isinstance(value, dict) else None
    return Action("click", "mai-ui", point=point) if point else None


def _qwen3vl(text: str) -> Action | None:
    if "point_2d" not in text and "bbox_2d" not in text:
        return None
    fenced = _FENCE.search(text)
    value = _json(fenced.group(1) if fenced else text.strip())
    for item in value if isinstance(value, list) else [value]:
        if isinstance(item, dict):
            point = _point(item.get("point_2d")) or _point(item.get("bbox_2d"))
            if point:
                return Action("click", "qwen3vl", point=point)
    # Not valid JSON as a whole (text around it, a truncated list): the first point or box written.
    found = [(m.start(), m) for m in (_POINT_KEY.search(text), _BOX_KEY.search(text)) if m]
    if not found:
        return None
    match = min(found, key=lambda pair: pair[0])[1]
    return Action("click", "qwen3vl", point=_point([float(g) for g in match.groups()]))


def _ui_tars(text: str) -> Action | None:
    # The last call in the text: "Thought: … Action: click(start_box='(x,y)')".
    matches = list(_UI_TARS_CALL.finditer(text))
    for match in reversed(matches):
        name, body = match.group(1), match.group(2)
        kwargs = {key: value for key, _, value in _KWARG.findall(body)}
        if body.strip() and not kwargs:
            continue  # click(412, 230) and the like are the click template's
        point = _tars_point(kwargs.get("start_box") or kwargs.get("point") or kwargs.get("start_point"))
        end = _tars_point(kwargs.get("end_box") or kwargs.get("end_point"))
        text_arg = kwargs.get("content", kwargs.get("app_name"))
        kind = {
            "left_single": "click",
            "left_double": "double_click",
            "right_single": "right_click",
            "finished": "terminate",
            "open_app": "open",
        }.get(name, name)
        if name in ("press_home", "press_back"):
            return Action("system_button", "ui-tars", button=name.removeprefix("press_"))
        if kind in ("click", "double_click", "right_click", "long_press") and point is None:
            continue
        if kind == "drag" and (point is None or end is None):
            continue
        return Action(
            kind,
            "ui-tars",
            point=point,
            end=end,
            direction=_lower(kwargs.get("direction")),
            text=_unescape(text_arg) if text_arg is not None else kwargs.get("key"),
            status="success" if name == "finished" else None,
        )
    return None


def _box_tokens(text: str) -> Action | None:
    match = _BOX_TOKENS.search(text)
    if not match:
        return None
    values = [float(g) for g in match.groups() if g is not None]
    return Action("click", "ui-tars", point=_point(values))


def _pyautogui(text: str) -> Action | None:
    for match in _PYAUTOGUI.finditer(text):
        name, body = match.group(1), match.group(2)
        args, kwargs = _call_args(body)
        if name in ("click", "doubleClick", "rightClick", "moveTo", "dragTo", "tripleClick"):
            x, y = (
                kwargs.get("x", args[0] if len(args) > 0 else None),
                kwargs.get("y", args[1] if len(args) > 1 else None),
            )
            if not isinstance(x, (int, float)) or not isinstance(y, (int, float)):
                continue
            kind = {"doubleClick": "double_click", "rightClick": "right_click", "tripleClick": "triple_click"}
            if name == "dragTo":
                return Action("drag", "pyautogui", end=(float(x), float(y)))
            if name == "moveTo":
                continue  # a move is not an action; the click that follows it is
            return Action(kind.get(name, "click"), "pyautogui", point=(float(x), float(y)))
        if name in ("write", "typewrite"):
            value = kwargs.get("message", args[0] if args else None)
            if isinstance(value, str):
                return Action("type", "pyautogui", text=value)
        if name in ("press", "hotkey"):
            keys = [a for a in args if isinstance(a, str)] or [kwargs.get("keys")]
            if keys and all(isinstance(k, str) for k in keys):
                return Action("hotkey", "pyautogui", text="+".join(k.lower() for k in keys))
        if name == "scroll" and args and isinstance(args[0], (int, float)):
            return Action("scroll", "pyautogui", direction="up" if args[0] > 0 else "down")
    return None


def _click(text: str) -> Action | None:
    match = _CLICK.search(text)
    return Action("click", "click", point=(float(match.group(1)), float(match.group(2)))) if match else None


# -- helpers -----------------------------------------------------------------------------------------


def _json(text: str):
    text = text.strip()
    fenced = _FENCE.search(text)
    if fenced:
        text = fenced.group(1).strip()
    try:
        return json.loads(text)
    except ValueError:
        return None


def _point(value) -> Point | None:
    """``[x, y]``, or the center of ``[x1, y1, x2, y2]``."""
    if not isinstance(value, (list, tuple)) or len(value) not in (2, 4):
        return None
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value):
        return None
    if len(value) == 4:
        return (value[0] + value[2]) / 2, (value[1] + value[3]) / 2
    return float(value[0]), float(value[1])


def _tars_point(value: str | None) -> Point | None:
    if not value:
        return None
    numbers = [float(n) for n in re.findall(_NUM, value)]
    return _point(numbers) if len(numbers) in (2, 4) else None


def _call_args(body: str) -> tuple[list, dict]:
    """Positional and keyword literals of a Python call's argument list (anything else: left out)."""
    import ast

    try:
        call = ast.parse(f"f({body})", mode="eval").body
    except SyntaxError:
        return [], {}
    args, kwargs = [], {}
    for node in call.args:
        try:
            args.append(ast.literal_eval(node))
        except ValueError:
            args.append(None)
    for keyword in call.keywords:
        try:
            kwargs[keyword.arg] = ast.literal_eval(keyword.value)
        except ValueError:
            pass
    return args, kwargs


def _str(value) -> str | None:
    return value if isinstance(value, str) else None


def _lower(value) -> str | None:
    return value.strip().lower() if isinstance(value, str) else None


def _unescape(value: str) -> str:
    return value.replace("\\'", "'").replace('\\"', '"').replace("\\n", "\n")
