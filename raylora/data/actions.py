"""What a GUI model's output means: its text parsed into one :class:`Action` (pure Python, no torch).

Formats read, tried in this order (the first that matches wins):

    mai-ui-nav   ``[<thinking>…</thinking>] <tool_call>{"name": "mobile_use", "arguments": {"action": …}}
                 </tool_call>`` over MAI-UI's action space: click, long_press, double_click (``coordinate``),
                 type (``text``), swipe (``direction``, optional ``coordinate``; or Qwen's ``coordinate`` →
                 ``coordinate2``), open/awake (``text``), drag (``start_coordinate``, ``end_coordinate``),
                 system_button (``button``), wait, terminate (``status``), answer (``text``), info — 0–999
    qwen3vl-nav  Qwen3-VL's ``<tool_call>{"name": "computer_use", "arguments": {"action": …}}</tool_call>``
                 (left_click, double_click, right_click, left_click_drag, key, type, scroll, wait,
                 terminate, answer) — 0–1000
    mai-ui       MAI-UI grounding ``[<grounding_think>…</grounding_think>] <answer>{"coordinate": [x, y]}
                 </answer>`` — 0–999
    qwen3vl      Qwen3-VL JSON ``{"point_2d": [x, y]}`` or ``{"bbox_2d": [x1, y1, x2, y2]}`` (its center),
                 bare, in a list (the first point or box written), in a ```json fence — 0–1000
    os-atlas     OS-Atlas ``CLICK <point>[[x,y]]</point>``, ``LONG_PRESS <point>…``, ``TYPE [text]``,
                 ``SCROLL [UP]``, ``PRESS_BACK``, ``PRESS_HOME``, ``ENTER``, ``COMPLETE``, ``IMPOSSIBLE``,
                 ``WAIT``, ``OPEN_APP [name]`` (the last such line) — 0–1000
    ui-tars      UI-TARS calls (the last one in the text): ``click(start_box='(x,y)')`` (also
                 ``'<|box_start|>(x,y)<|box_end|>'``, ``'[x1, y1, x2, y2]'``, UI-TARS-1.5's
                 ``point='<point>x y</point>'``) over its action space (click, left_double, right_single,
                 long_press, drag, type, hotkey, press, scroll, wait, finished, call_user, press_home,
                 press_back, open_app); and a bare ``<|box_start|>(x,y)<|box_end|>`` (a box
                 ``(x1,y1),(x2,y2)`` is its center)
    pyautogui    ``pyautogui.click(x=…, y=…)`` (or positional), doubleClick, rightClick, tripleClick, write,
                 typewrite, press, hotkey, scroll, hscroll, dragTo (the first action in the text)
    aguvis       the same calls with every coordinate written as a float within 0–1 (Aguvis), and Aguvis'
                 ``mobile.*`` calls (home, back, wait, long_press, open_app, swipe, terminate) — 0–1
    showui       ShowUI's bare ``[0.52, 0.31]`` (or a 0–1 box, its center) — 0–1
    click        the ``click`` template's ``click(x, y)``

Calls are read as call syntax by :mod:`.calls` (quoted ``)``, escapes, nesting, text and special tokens
around them), JSON by a JSON decoder from where it starts (text after it is ignored). Output that matches
none of these is a **format error** (:func:`parse` returns None): every accuracy counts it as a miss, and
scoring reports it on its own.

Key combinations are written one way (:func:`keys`): ``ctrl c`` = ``ctrl+c`` = ``Ctrl+C`` = ``['ctrl', 'c']``
→ ``ctrl+c`` (lower case, modifiers first in the order ctrl, alt, shift, cmd, win).

Scroll and swipe directions. Formats disagree on what a direction names: MAI-UI's ``swipe`` names the way
the **finger** moves (its agent moves the finger from the point toward ``direction``); UI-TARS' ``scroll``,
pyautogui's ``scroll``/``hscroll``, Qwen3-VL's ``scroll``, OS-Atlas' ``SCROLL`` and AndroidControl name the
way the **view** moves (``scroll down`` shows what is below: the finger moves up). :data:`FINGER_FORMATS`
says which is which; :attr:`Action.finger` is the finger's direction whatever the format (a swipe given as
two points: the main axis of the move), and scoring compares that, with ``scroll`` and ``swipe`` one type.

Coordinates. An :class:`Action` keeps the numbers the model wrote and the convention its format fixes
(``native``): 0–999 for MAI-UI's two formats, 0–1000 for Qwen3-VL's and OS-Atlas', 0–1 (``unit``) for
ShowUI's and Aguvis'; ``click(x, y)``, pyautogui and UI-TARS (0–1000 in v1, pixels in 1.5) fix none.
:func:`in_convention` reads a point in the data's answer convention (``data.template`` over
``data.coordinates``, see :mod:`.coordinates`) by these rules:

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

from . import calls, coordinates

Point = tuple[float, float]

GROUNDING_FORMATS = ("mai-ui", "qwen3vl", "click", "showui")
"""Formats that answer a point only; a reference in any other format is a navigation step."""
NATIVE = {
    "mai-ui-nav": "mai-ui",
    "mai-ui": "mai-ui",
    "qwen3vl": "qwen3vl",
    "qwen3vl-nav": "qwen3vl",
    "os-atlas": "qwen3vl",
    "showui": "unit",
    "aguvis": "unit",
}
"""The convention a format fixes (formats absent here fix none)."""
FINGER_FORMATS = ("mai-ui-nav",)
"""Formats whose direction is the finger's; every other format's is the view's (the opposite)."""
POINTED = ("click", "long_press", "double_click", "right_click", "triple_click", "middle_click")
"""Action types that need a point (one without is no action)."""
_OPPOSITE = {"up": "down", "down": "up", "left": "right", "right": "left"}


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

    @property
    def finger(self) -> str | None:
        """The way the finger moves for a swipe or scroll (see the module docstring), or None."""
        if self.direction in _OPPOSITE:
            return self.direction if self.format in FINGER_FORMATS else _OPPOSITE[self.direction]
        if self.direction is None and self.point is not None and self.end is not None:
            dx, dy = self.end[0] - self.point[0], self.end[1] - self.point[1]
            if dx or dy:
                return ("right" if dx > 0 else "left") if abs(dx) > abs(dy) else ("down" if dy > 0 else "up")
        return None


def parse(text: str) -> Action | None:
    """The action ``text`` names, in any format above; None is a format error."""
    if not isinstance(text, str):
        return None
    for parser in (_tool_call, _mai_ui_answer, _qwen3vl, _os_atlas, _calls, _box_tokens, _showui):
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


def point(value) -> Point | None:
    """A point written as ``[x, y]`` (or ``[[x, y]]``), or the center of ``[x1, y1, x2, y2]``; a string
    is read for its numbers (``'(x,y)'``, ``'<point>x y</point>'``, ``'<|box_start|>(x1,y1),(x2,y2)
    <|box_end|>'``). None when it is not 2 or 4 numbers."""
    if isinstance(value, str):
        value = [float(n) for n in _NUMBER.findall(value)]
    if isinstance(value, (list, tuple)) and len(value) == 1 and isinstance(value[0], (list, tuple)):
        value = value[0]
    if not isinstance(value, (list, tuple)) or len(value) not in (2, 4):
        return None
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value):
        return None
    if len(value) == 4:
        return (value[0] + value[2]) / 2, (value[1] + value[3]) / 2
    return float(value[0]), float(value[1])


_KEY_NAMES = {
    "control": "ctrl",
    "ctl": "ctrl",
    "return": "enter",
    "esc": "escape",
    "del": "delete",
    "command": "cmd",
    "meta": "cmd",
    "option": "alt",
    "super": "win",
    "windows": "win",
    "pgup": "pageup",
    "pgdn": "pagedown",
    "arrowup": "up",
    "arrowdown": "down",
    "arrowleft": "left",
    "arrowright": "right",
}
_MODIFIERS = ("ctrl", "alt", "shift", "cmd", "win")


def keys(value) -> str | None:
    """A key combination written one way (the module docstring); None when it names no key."""
    if isinstance(value, str):
        value = re.split(r"[\s+,]+", value.strip())
    if not isinstance(value, (list, tuple)) or not all(isinstance(k, str) for k in value):
        return None
    names = [_KEY_NAMES.get(k.strip().lower(), k.strip().lower()) for k in value if k.strip()]
    ordered = [m for m in _MODIFIERS if m in names] + [k for k in names if k not in _MODIFIERS]
    return "+".join(dict.fromkeys(ordered)) or None


# -- JSON formats --------------------------------------------------------------------------------------

_NUMBER = re.compile(r"[-+]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?")
_TOOL_CALL = re.compile(r"<tool_call>")
_ANSWER = re.compile(r"<answer>")
_QWEN_KEY = re.compile(r'"(point_2d|bbox_2d)"\s*:\s*')
_TOOL_TYPES = {"left_click": "click", "awake": "open", "key": "hotkey", "left_click_drag": "drag"}


def _tool_call(text: str) -> Action | None:
    match = _TOOL_CALL.search(text)
    call = _json_after(text, match.end()) if match else None
    if not isinstance(call, dict):
        return None
    args = call.get("arguments", call)
    if isinstance(args, str):
        args = _json_after(args, 0)
    if not isinstance(args, dict) or not isinstance(args.get("action"), str):
        return None
    fmt = "qwen3vl-nav" if call.get("name") == "computer_use" else "mai-ui-nav"
    kind = args["action"].strip().lower()
    kind = _TOOL_TYPES.get(kind, kind)
    action = Action(
        kind,
        fmt,
        point=point(args.get("coordinate")),
        end=point(args.get("coordinate2")),
        direction=_lower(args.get("direction")),
        text=_str(args.get("text")),
        button=_lower(args.get("button")),
        status=_lower(args.get("status")),
    )
    if kind == "drag" and "start_coordinate" in args:
        action = replace(action, point=point(args["start_coordinate"]), end=point(args.get("end_coordinate")))
    elif kind == "drag":  # computer_use's left_click_drag: from the cursor to ``coordinate``
        action = replace(action, point=None, end=action.point)
    if kind == "hotkey":
        action = replace(action, text=keys(args.get("keys", args.get("text"))))
    if kind in ("scroll", "hscroll") and isinstance(args.get("pixels"), (int, float)):
        sign = args["pixels"] > 0
        way = ("up" if sign else "down") if kind == "scroll" else ("right" if sign else "left")
        action = replace(action, type="scroll", direction=way)
    return None if kind in POINTED and action.point is None else action


def _mai_ui_answer(text: str) -> Action | None:
    match = _ANSWER.search(text)
    value = _json_after(text, match.end()) if match else None
    found = point(value.get("coordinate")) if isinstance(value, dict) else None
    return Action("click", "mai-ui", point=found) if found else None


def _qwen3vl(text: str) -> Action | None:
    # The first point or box written, wherever it is (a list, a fence, a truncated list after it).
    for match in _QWEN_KEY.finditer(text):
        value = _json_at(text, match.end())
        found = point(value) if isinstance(value, list) else None
        if found:
            return Action("click", "qwen3vl", point=found)
    return None


def _json_after(text: str, pos: int):
    """The JSON value starting at the first ``{`` or ``[`` from ``pos`` (text after it ignored)."""
    starts = [i for i in (text.find("{", pos), text.find("[", pos)) if i >= 0]
    return _json_at(text, min(starts)) if starts else None


def _json_at(text: str, pos: int):
    """The JSON value that starts at ``pos`` (after blanks), or None."""
    try:
        return json.JSONDecoder().raw_decode(text, len(text) - len(text[pos:].lstrip()))[0]
    except (ValueError, RecursionError):  # RecursionError: brackets nested past Python's stack
        return None


# -- OS-Atlas, ShowUI, box tokens ----------------------------------------------------------------------

_ATLAS = re.compile(
    r"^[ \t]*(?:actions?:[ \t]*)?(CLICK|LONG_PRESS|TYPE|SCROLL|PRESS_BACK|PRESS_HOME|PRESS_RECENT|ENTER"
    r"|COMPLETE|IMPOSSIBLE|WAIT|OPEN_APP)\b(.*)$",
    re.M,
)
_ATLAS_POINT = re.compile(r"<point>(.*?)</point>", re.S)
_ATLAS_VALUE = re.compile(r"\[(.*)\]")
_ATLAS_TYPES = {
    "CLICK": Action("click", "os-atlas"),
    "LONG_PRESS": Action("long_press", "os-atlas"),
    "TYPE": Action("type", "os-atlas"),
    "SCROLL": Action("scroll", "os-atlas"),
    "OPEN_APP": Action("open", "os-atlas"),
    "PRESS_BACK": Action("system_button", "os-atlas", button="back"),
    "PRESS_HOME": Action("system_button", "os-atlas", button="home"),
    "PRESS_RECENT": Action("system_button", "os-atlas", button="recent"),
    "ENTER": Action("system_button", "os-atlas", button="enter"),
    "COMPLETE": Action("terminate", "os-atlas", status="success"),
    "IMPOSSIBLE": Action("terminate", "os-atlas", status="fail"),
    "WAIT": Action("wait", "os-atlas"),
}


def _os_atlas(text: str) -> Action | None:
    for match in reversed(list(_ATLAS.finditer(text))):
        verb, rest = match.groups()
        action = _ATLAS_TYPES[verb]
        if verb in ("CLICK", "LONG_PRESS"):
            found = _ATLAS_POINT.search(rest)
            action = replace(action, point=point(found.group(1)) if found else None)
            if action.point is None:
                continue
        elif verb in ("TYPE", "OPEN_APP", "SCROLL"):
            value = _ATLAS_VALUE.search(rest)
            if value is None:
                continue
            written = value.group(1).strip()
            action = replace(
                action, **({"direction": written.lower()} if verb == "SCROLL" else {"text": written})
            )
        return action
    return None


_BOX_TOKENS = re.compile(r"<\|box_start\|>(.*?)<\|box_end\|>", re.S)
_SPECIAL = re.compile(r"<\|[a-z_]+\|>|</?s>")


def _box_tokens(text: str) -> Action | None:
    for match in _BOX_TOKENS.finditer(text):
        found = point(match.group(1))
        if found:
            return Action("click", "ui-tars", point=found)
    return None


def _showui(text: str) -> Action | None:
    bare = _SPECIAL.sub("", text).strip().rstrip(".").strip()
    if not bare.startswith("["):
        return None
    value = _json_after(bare, 0)
    found = point(value) if isinstance(value, list) and len(value) in (2, 4) else None
    if found is None or not all(0 <= v <= 1 for v in value):
        return None
    return Action("click", "showui", point=found)


# -- calls: UI-TARS, pyautogui, Aguvis, click(x, y) ----------------------------------------------------

_TARS_TYPES = {
    "click": "click",
    "left_single": "click",
    "left_double": "double_click",
    "right_single": "right_click",
    "long_press": "long_press",
    "drag": "drag",
    "select": "drag",
    "type": "type",
    "hotkey": "hotkey",
    "press": "hotkey",
    "scroll": "scroll",
    "wait": "wait",
    "finished": "terminate",
    "call_user": "call_user",
    "press_home": "system_button",
    "press_back": "system_button",
    "open_app": "open",
}


def _calls(text: str) -> Action | None:
    found = calls.find(text)
    for call in reversed(found):  # UI-TARS: the last call ("Thought: … Action: click(...)")
        action = _ui_tars(call)
        if action is not None:
            return action
    start = None  # where a moveTo left the mouse: a dragTo's start
    for call in found:  # pyautogui: the first action (a moveTo before a click is not one)
        action = _pyautogui(call, start) or _aguvis_mobile(call)
        if action is not None:
            return action
        if call.name == "pyautogui.moveTo":
            start = _pyautogui_xy(call)[0]
    for call in found:
        if (
            call.name == "click"
            and len(call.args) == 2
            and not call.kwargs
            and (xy := point(list(call.args)))
        ):
            return Action("click", "click", point=xy)
    return None


def _ui_tars(call: calls.Call) -> Action | None:
    kind = _TARS_TYPES.get(call.name)
    if kind is None or call.args:
        return None  # click(412, 230) and the like are the click template's
    kw = call.kwargs
    if call.name in ("press_home", "press_back"):
        return Action(kind, "ui-tars", button=call.name.removeprefix("press_"))
    action = Action(
        kind,
        "ui-tars",
        point=_first_point(kw, "start_box", "point", "start_point"),
        end=_first_point(kw, "end_box", "end_point"),
        direction=_lower(kw.get("direction")),
        text=_str(kw.get("content", kw.get("app_name"))),
        status="success" if call.name == "finished" else None,
    )
    if kind == "hotkey":
        action = replace(action, text=keys(kw.get("key", kw.get("hotkey"))))
    if (kind in POINTED and action.point is None) or (kind == "drag" and None in (action.point, action.end)):
        return None
    return action


def _first_point(kwargs: dict, *names: str) -> Point | None:
    return next((p for name in names if (p := point(kwargs.get(name))) is not None), None)


_PYAUTOGUI_CLICKS = {
    "click": "click",
    "doubleClick": "double_click",
    "rightClick": "right_click",
    "tripleClick": "triple_click",
    "middleClick": "middle_click",
    "dragTo": "drag",
}


def _pyautogui_xy(call: calls.Call) -> tuple[Point | None, str]:
    """The point of a pyautogui mouse call and its format: ``aguvis`` when both numbers are written as
    floats within 0–1 (Aguvis' convention; no pixel answer looks like that), ``pyautogui`` otherwise."""
    args, kw = call.args, call.kwargs
    x, y = kw.get("x", args[0] if args else None), kw.get("y", args[1] if len(args) > 1 else None)
    unit = all(isinstance(v, float) and 0 <= v <= 1 for v in (x, y))
    return point([x, y]), "aguvis" if unit else "pyautogui"


def _pyautogui(call: calls.Call, start: Point | None = None) -> Action | None:
    prefix, _, name = call.name.rpartition(".")
    if prefix != "pyautogui":
        return None
    args, kw = call.args, call.kwargs
    if name in _PYAUTOGUI_CLICKS:
        xy, fmt = _pyautogui_xy(call)
        if xy is None:
            return None
        kind = _PYAUTOGUI_CLICKS[name]
        return Action(kind, fmt, point=start, end=xy) if kind == "drag" else Action(kind, fmt, point=xy)
    if name in ("write", "typewrite"):
        value = kw.get("message", args[0] if args else None)
        return Action("type", "pyautogui", text=value) if isinstance(value, str) else None
    if name in ("press", "hotkey"):
        value = (
            list(args) if name == "hotkey" and len(args) > 1 else kw.get("keys", args[0] if args else None)
        )
        combination = keys(value)
        return Action("hotkey", "pyautogui", text=combination) if combination else None
    if name in ("scroll", "hscroll"):
        clicks = kw.get("clicks", args[0] if args else None)
        if not isinstance(clicks, (int, float)) or isinstance(clicks, bool) or clicks == 0:
            return None
        way = ("up" if clicks > 0 else "down") if name == "scroll" else ("right" if clicks > 0 else "left")
        return Action("scroll", "pyautogui", direction=way)
    return None


def _aguvis_mobile(call: calls.Call) -> Action | None:
    prefix, _, name = call.name.rpartition(".")
    if prefix != "mobile":
        return None
    kw = call.kwargs
    if name in ("home", "back"):
        return Action("system_button", "aguvis", button=name)
    if name == "wait":
        return Action("wait", "aguvis")
    if name == "long_press":
        xy = point([kw.get("x"), kw.get("y")])
        return Action("long_press", "aguvis", point=xy) if xy else None
    if name == "open_app":
        return Action("open", "aguvis", text=_str(kw.get("app_name")))
    if name == "swipe":
        start, end = point(kw.get("from_coord")), point(kw.get("to_coord"))
        return Action("swipe", "aguvis", point=start, end=end) if start and end else None
    if name == "terminate":
        return Action("terminate", "aguvis", status=_lower(kw.get("status")))
    return None


def _str(value) -> str | None:
    return value if isinstance(value, str) else None


def _lower(value) -> str | None:
    return value.strip().lower() if isinstance(value, str) else None
