"""Every output format read back: hypothesis draws an action (a point on a random screen, a text with ``)``,
quotes, escapes and unicode, a key combination, a swipe), this file renders it in every format with its own
code — with a thought before it and a ``.`` or a leftover special token after it — and ``actions.parse``
must return the same action: the same type, the same text, the point within half a unit of the format."""

from __future__ import annotations

import json

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from raylora.data import actions

SETTINGS = settings(max_examples=60, suppress_health_check=[HealthCheck.too_slow], derandomize=True)

SCREENS = st.one_of(
    st.sampled_from([(3840, 2160), (1080, 2400), (4000, 300), (1920, 1080)]),
    st.tuples(st.integers(2, 5000), st.integers(2, 5000)),
)
SUFFIXES = st.sampled_from(["", ".", "<|im_end|>", ".<|im_end|>", "\n", " <|endoftext|>", "\n\nDone."])
THOUGHTS = st.text(alphabet="abcdefgh ()'\",.:?!é中", max_size=30)
TEXTS = st.text(
    alphabet=st.one_of(
        st.sampled_from(list("()[]{}'\"\\,=.:;!? \n\t")),
        st.characters(categories=("L", "N", "P", "S"), exclude_characters="\r\x0b\x0c\x1c\x1d\x1e\x85"),
    ),
    min_size=1,
    max_size=40,
).filter(lambda t: t.strip() == t and t)
MODIFIERS = ["ctrl", "alt", "shift"]


# -- the test's own writers ----------------------------------------------------------------------------


def quoted(text: str, quote: str) -> str:
    """A Python string literal of ``text`` in ``quote``s: backslash, the quote and line ends escaped."""
    body = text.replace("\\", "\\\\").replace(quote, "\\" + quote).replace("\n", "\\n").replace("\t", "\\t")
    return quote + body + quote


def tool_call(name: str, arguments: dict, ascii_only: bool) -> str:
    body = json.dumps({"name": name, "arguments": arguments}, ensure_ascii=ascii_only)
    return f"<tool_call>\n{body}\n</tool_call>"


def relative(pixel: tuple[float, float], size, extent: float) -> tuple[float, float]:
    return pixel[0] / size[0] * extent, pixel[1] / size[1] * extent


def clicks(pixel, size) -> list[tuple[str, str, tuple[float, float], float | None]]:
    """``(format, text, the numbers written, their extent)`` for one click in every format; the extent is
    1000, 999 or 1 for relative numbers, None for pixels."""
    q = tuple(round(v) for v in relative(pixel, size, 1000))
    m = tuple(round(v) for v in relative(pixel, size, 999))
    u = tuple(round(v, 4) for v in relative(pixel, size, 1))
    p = tuple(round(v) for v in pixel)
    box = (q[0] - 7, q[1] - 5, q[0] + 7, q[1] + 5)  # centered on q
    mai_nav = tool_call("mobile_use", {"action": "click", "coordinate": list(m)}, True)
    qwen_nav = tool_call("computer_use", {"action": "left_click", "coordinate": list(q)}, True)
    listed = f'```json\n[\n  {{"point_2d": [{q[0]}, {q[1]}], "label": "OK (main)"}}\n]\n```'
    grounding = f'<grounding_think>the (x) icon</grounding_think><answer>{{"coordinate": {list(m)}}}</answer>'
    return [
        ("click", f"click({p[0]}, {p[1]})", p, None),
        ("qwen3vl", json.dumps({"point_2d": list(q)}), q, 1000),
        ("qwen3vl", listed, q, 1000),
        ("qwen3vl", json.dumps([{"bbox_2d": list(box), "label": "a"}]), q, 1000),
        ("mai-ui", grounding, m, 999),
        ("mai-ui-nav", "<thinking>tap it</thinking>\n" + mai_nav, m, 999),
        ("qwen3vl-nav", qwen_nav, q, 1000),
        ("ui-tars", f"click(start_box='({q[0]},{q[1]})')", q, 1000),
        ("ui-tars", f"click(start_box='<|box_start|>({q[0]},{q[1]})<|box_end|>')", q, 1000),
        ("ui-tars", f"left_single(start_box='[{box[0]}, {box[1]}, {box[2]}, {box[3]}]')", q, 1000),
        ("ui-tars", f"click(point='<point>{p[0]} {p[1]}</point>')", p, None),
        ("ui-tars", f"<|box_start|>({box[0]},{box[1]}),({box[2]},{box[3]})<|box_end|>", q, 1000),
        ("os-atlas", f"CLICK <point>[[{q[0]},{q[1]}]]</point>", q, 1000),
        ("pyautogui", f"pyautogui.click(x={p[0]}, y={p[1]})", p, None),
        ("pyautogui", f"pyautogui.moveTo({p[0]}, {p[1]})\npyautogui.click({p[0]}, {p[1]})", p, None),
        ("aguvis", f"pyautogui.click(x={u[0]:.4f}, y={u[1]:.4f})", u, 1),
        ("showui", f"[{u[0]:.4f}, {u[1]:.4f}]", u, 1),
    ]


# -- points --------------------------------------------------------------------------------------------


@st.composite
def screen_points(draw):
    size = draw(SCREENS)
    # kept off the far edge by half a pixel so every format's rounding stays on the screen
    x = draw(st.floats(0.5, max(0.5, size[0] - 1.0)))
    y = draw(st.floats(0.5, max(0.5, size[1] - 1.0)))
    return size, (x, y)


@SETTINGS
@given(screen_points(), SUFFIXES, THOUGHTS)
def test_a_click_in_every_format_reads_back_as_written(case, suffix, thought):
    size, pixel = case
    for fmt, text, written, _ in clicks(pixel, size):
        prefix = f"Thought: {thought}\nAction: " if fmt in ("ui-tars", "pyautogui") else ""
        action = actions.parse(prefix + text + suffix)
        assert action is not None, (fmt, prefix + text + suffix)
        assert (action.type, action.format) == ("click", fmt), (text, action)
        assert abs(action.point[0] - written[0]) <= 1e-9 and abs(action.point[1] - written[1]) <= 1e-9, text


@SETTINGS
@given(screen_points())
def test_a_point_comes_back_to_its_pixel_within_half_a_unit(case):
    """In pixels, each format's point is the pixel drawn to within half a unit of what it writes: a format
    that fixes a convention is converted by ``in_convention``, one that fixes none is the data's numbers."""
    size, pixel = case
    for fmt, text, _, extent in clicks(pixel, size):
        action = actions.parse(text)
        if action.native is not None:
            back = actions.in_convention(action, "pixels", size=size).point
        elif extent is None:
            back = action.point
        else:  # the data's convention is this relative one: the test's own conversion
            back = (action.point[0] / extent * size[0], action.point[1] / extent * size[1])
        if extent is None:
            half = (0.5, 0.5)
        elif extent == 1:  # written with 4 decimals
            half = (0.5e-4 * size[0], 0.5e-4 * size[1])
        else:
            half = (0.5 * size[0] / extent, 0.5 * size[1] / extent)
        assert abs(back[0] - pixel[0]) <= half[0] * (1 + 1e-9), (fmt, text, back, pixel)
        assert abs(back[1] - pixel[1]) <= half[1] * (1 + 1e-9), (fmt, text, back, pixel)


@SETTINGS
@given(screen_points())
def test_a_truncated_call_is_a_format_error(case):
    size, pixel = case
    q = tuple(round(v) for v in relative(pixel, size, 1000))
    whole = f"click(start_box='({q[0]},{q[1]})')"
    for cut in range(len("click("), len(whole)):
        assert actions.parse(whole[:cut]) is None, whole[:cut]


# -- text ----------------------------------------------------------------------------------------------


def typed(text: str, ascii_only: bool) -> list[tuple[str, str]]:
    """``(format, output)`` typing ``text`` in every format that types."""
    out = [
        ("ui-tars", "type(content=" + quoted(text, "'") + ")"),
        ("ui-tars", "type(content=" + quoted(text, '"') + ")"),
        ("pyautogui", "pyautogui.write(" + quoted(text, "'") + ")"),
        ("pyautogui", "pyautogui.typewrite(message=" + quoted(text, '"') + ")"),
        ("mai-ui-nav", tool_call("mobile_use", {"action": "type", "text": text}, ascii_only)),
        ("qwen3vl-nav", tool_call("computer_use", {"action": "type", "text": text}, ascii_only)),
    ]
    if "\n" not in text and "[" not in text and "]" not in text:
        out.append(("os-atlas", f"TYPE [{text}]"))
    return out


@SETTINGS
@given(TEXTS, SUFFIXES, st.booleans())
def test_typed_text_reads_back_exactly(text, suffix, ascii_only):
    for fmt, output in typed(text, ascii_only):
        if fmt == "os-atlas" and suffix.strip(" .") and "\n" not in suffix:
            continue  # OS-Atlas' value runs to the line's end: a token on the same line is part of it
        action = actions.parse(output + suffix)
        assert action is not None, output + suffix
        assert (action.type, action.format, action.text) == ("type", fmt, text), (output + suffix, action)


@SETTINGS
@given(TEXTS)
def test_a_quoted_paren_inside_another_call_does_not_end_it(text):
    output = "Thought: first I type.\nAction: type(content=" + quoted(f"Say ({text}) there", "'") + ")"
    assert actions.parse(output).text == f"Say ({text}) there"
    assert actions.parse("pyautogui.write(" + quoted(f"f({text}) = 1", '"') + ")").text == f"f({text}) = 1"


# -- keys, swipes, buttons -----------------------------------------------------------------------------


@st.composite
def combinations(draw):
    modifiers = draw(st.lists(st.sampled_from(MODIFIERS), unique=True, max_size=2))
    key = draw(st.sampled_from(["c", "v", "a", "tab", "f4", "enter", "delete", "z"]))
    return modifiers, key


@SETTINGS
@given(combinations(), st.randoms(use_true_random=False))
def test_a_key_combination_is_one_combination_however_written(combination, rnd):
    modifiers, key = combination
    shuffled = modifiers[:]
    rnd.shuffle(shuffled)
    expected = "+".join([m for m in MODIFIERS if m in modifiers] + [key])  # ctrl, alt, shift, then the key
    names = [*shuffled, key]
    writings = [
        "hotkey(key=" + quoted(" ".join(names), "'") + ")",
        "hotkey(key=" + quoted("+".join(n.capitalize() for n in names), "'") + ")",
        "pyautogui.hotkey(" + ", ".join(quoted(n.upper(), "'") for n in names) + ")",
        tool_call("computer_use", {"action": "key", "keys": names}, True),
    ]
    if not modifiers:
        writings.append(f"pyautogui.press('{key}')")
    for output in writings:
        action = actions.parse(output + ".")
        assert (action.type, action.text) == ("hotkey", expected), (output, action)


OPPOSITE = {"up": "down", "down": "up", "left": "right", "right": "left"}


@SETTINGS
@given(st.sampled_from(list(OPPOSITE)), st.integers(1, 10), screen_points())
def test_a_swipe_is_the_same_finger_move_in_every_format(finger, amount, case):
    size, (x, y) = case
    view = OPPOSITE[finger]  # the view moves the other way
    step = {"up": (0, -1), "down": (0, 1), "left": (-1, 0), "right": (1, 0)}[finger]
    start = (0.5, 0.5)
    end = (round(start[0] + 0.3 * step[0], 2), round(start[1] + 0.3 * step[1], 2))
    clicks_written = amount if view in ("up", "right") else -amount
    qwen_end = [500 + 300 * step[0], 500 + 300 * step[1]]
    writings = [
        tool_call("mobile_use", {"action": "swipe", "direction": finger}, True),
        tool_call(
            "mobile_use", {"action": "swipe", "direction": finger.upper(), "coordinate": [500, 500]}, True
        ),
        tool_call("mobile_use", {"action": "swipe", "coordinate": [500, 500], "coordinate2": qwen_end}, True),
        f"scroll(start_box='({round(x)},{round(y)})', direction='{view}')",
        f"scroll(point='<point>{round(x)} {round(y)}</point>', direction=\"{view}\")",
        f"pyautogui.{'scroll' if view in ('up', 'down') else 'hscroll'}({clicks_written})",
        f"mobile.swipe(from_coord=[{start[0]}, {start[1]}], to_coord=[{end[0]}, {end[1]}])",
        f"SCROLL [{view.upper()}]",
    ]
    for output in writings:
        action = actions.parse(output)
        assert action is not None and action.type in ("swipe", "scroll"), output
        assert action.finger == finger, (output, action)


def test_the_action_spaces_name_their_buttons_and_ends():
    cases = {
        "press_back()": ("system_button", "back"),
        "Action: press_home().": ("system_button", "home"),
        "PRESS_BACK": ("system_button", "back"),
        "mobile.home()": ("system_button", "home"),
        tool_call("mobile_use", {"action": "system_button", "button": "Enter"}, True): (
            "system_button",
            "enter",
        ),
    }
    for output, (kind, button) in cases.items():
        assert (actions.parse(output).type, actions.parse(output).button) == (kind, button), output
    for output, status in {
        "finished(content='done (all)')": "success",
        "COMPLETE": "success",
        "IMPOSSIBLE": "fail",
        "mobile.terminate(status='failure')": "failure",
        tool_call("mobile_use", {"action": "terminate", "status": "fail"}, True): "fail",
    }.items():
        assert (actions.parse(output).type, actions.parse(output).status) == ("terminate", status), output


def test_prose_and_broken_calls_are_format_errors():
    for output in [
        "",
        "The OK button (top right) is what you want.",
        "click(start_box='(100,200)",
        "type(content='unterminated)",
        "pyautogui.click(x=, y=2)",
        "[1.5, 0.5]",  # not ShowUI's 0–1
        "CLICK <point>[[500]]</point>",
    ]:
        assert actions.parse(output) is None, output


def test_one_point_reader():
    """``actions.point`` is the one reader of written points (templates keep none of their own)."""
    from raylora.data import templates

    assert not hasattr(templates, "parse_point")
    assert actions.point("<|box_start|>(10,20),(30,40)<|box_end|>") == (20.0, 30.0)
    assert actions.point([[5, 6]]) == (5.0, 6.0)


# -- raylora's own answers read back -------------------------------------------------------------------

EXTENTS = {"qwen3vl": 1000, "mai-ui": 999, "unit": 1, "pixels": None}


@SETTINGS
@given(screen_points(), st.sampled_from(["click", "qwen3vl", "mai-ui"]), st.sampled_from(list(EXTENTS)))
def test_a_rendered_answer_reads_back_to_its_pixel_within_half_a_unit(case, template, data_coordinates):
    """A supervised answer as a template renders it (raylora's training target), parsed back: the box
    center's pixel to within half a unit of the answer's convention."""
    from raylora.data import templates

    size, center = case
    box = (center[0] - 0.5, center[1] - 0.5, center[0] + 0.5, center[1] + 0.5)
    row = templates.grounding_row("shot.png", "open it", box, size, template, data_coordinates)
    answer = row["messages"][-1]["content"][0]["text"]
    convention = templates.get(template).answer_convention(data_coordinates)
    action = actions.parse(answer)
    assert action is not None and action.type == "click", answer
    extent = EXTENTS[convention]
    if extent is None:
        back, half = action.point, (0.5, 0.5)
    else:
        back = (action.point[0] / extent * size[0], action.point[1] / extent * size[1])
        unit = 1e-4 if extent == 1 else 1  # 0–1 answers are written with 4 decimals
        half = (0.5 * unit * size[0] / extent, 0.5 * unit * size[1] / extent)
    assert abs(back[0] - center[0]) <= half[0] * (1 + 1e-9) + 1e-9, (answer, center, size)
    assert abs(back[1] - center[1]) <= half[1] * (1 + 1e-9) + 1e-9, (answer, center, size)


PIECES = list("()[]{}'\"\\,=.:<>|/ \n") + [
    "click",
    "type",
    "pyautogui.",
    "<tool_call>",
    "[[",
    "0.5",
    "7",
    "CLICK ",
]


@SETTINGS
@given(
    st.lists(st.sampled_from(PIECES), max_size=40).map("".join)
    | st.builds(lambda n, c: c * n, st.integers(1, 5000), st.sampled_from(["[", "(", "{", "click(", "f(x=["]))
)
def test_any_text_parses_or_is_a_format_error_never_an_exception(text):
    action = actions.parse(text)
    assert action is None or isinstance(action, actions.Action)
    assert action is None or action.point is None or len(action.point) == 2


@SETTINGS
@given(screen_points(), screen_points(), SUFFIXES)
def test_a_drag_reads_back_its_start_and_end(first, second, suffix):
    a, b = (tuple(round(v) for v in case[1]) for case in (first, second))
    writings = [
        f"pyautogui.moveTo({a[0]}, {a[1]})\npyautogui.dragTo({b[0]}, {b[1]}, duration=0.5)",
        f"drag(start_box='({a[0]},{a[1]})', end_box='({b[0]},{b[1]})')",
        f"drag(start_point='<point>{a[0]} {a[1]}</point>', end_point='<point>{b[0]} {b[1]}</point>')",
        tool_call(
            "mobile_use", {"action": "drag", "start_coordinate": list(a), "end_coordinate": list(b)}, True
        ),
    ]
    for output in writings:
        action = actions.parse(output + suffix)
        assert (action.type, action.point, action.end) == ("drag", tuple(map(float, a)), tuple(map(float, b)))
