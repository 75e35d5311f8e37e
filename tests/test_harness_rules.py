"""The published harnesses' rules, re-implemented here in plain pixel geometry and compared with raylora's
outcome on generated records read from files (the path ``raylora score`` takes):

- ScreenSpot-Pro (likaixin2000/ScreenSpot-Pro-GUI-Grounding ``eval_screenspot_pro.py``): a point is right
  inside the box, edges included; a wrong-format answer is a miss; accuracy per ``group`` and ``ui_type``.
- AndroidControl / MAI-UI navigation (AITW's ``action_matching.py``, which OS-Atlas, UI-TARS and GUI-Odyssey
  follow; the AndroidControl harnesses' text rule): the action type matches (a scroll is a swipe); a step
  matches when its arguments do too — a click within 0.14 of the reference in fractions of the screen's
  width and height, the same finger direction, the same button or status, typed text equal or one inside
  the other after lower-casing and stripping.
- A reference answer that names no action is an error naming ``file:LINE``, never left out.
"""

from __future__ import annotations

import itertools
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from PIL import Image

from raylora.data import samples, scoring
from raylora.errors import DataError

SETTINGS = settings(max_examples=20, suppress_health_check=[HealthCheck.too_slow], derandomize=True)
SCREENS = st.one_of(
    st.sampled_from([(3840, 2160), (1080, 2400), (4000, 300)]),
    st.tuples(st.integers(16, 3000), st.integers(16, 3000)),
)
_COUNTER = itertools.count()


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("harness")


def _image(folder: Path, size) -> str:
    path = folder / f"{size[0]}x{size[1]}.png"
    if not path.is_file():
        Image.new("1", size).save(path)  # one bit a pixel: only the header's size matters here
    return path.name


def _row(folder: Path, answer: str, size, bbox=None, categories=None) -> dict:
    row = {
        "messages": [
            {
                "role": "user",
                "content": [{"type": "image", "image": _image(folder, size)}, {"type": "text", "text": "go"}],
            },
            {"role": "assistant", "content": [{"type": "text", "text": answer}]},
        ],
        "categories": categories or {},
    }
    if bbox is not None:
        row["bbox"] = list(bbox)
    return row


def _goals(folder: Path, rows: list[dict], convention: str) -> list:
    path = folder / f"data{next(_COUNTER)}.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    records = samples.read(path, coordinates=convention)
    return [scoring.goal(record, convention) for record in records]


def _tool(**arguments) -> str:
    return "<tool_call>" + json.dumps({"name": "mobile_use", "arguments": arguments}) + "</tool_call>"


# -- ScreenSpot-Pro: point in box ----------------------------------------------------------------------


@st.composite
def grounding_cases(draw):
    """A screen, a box down to 2×2 px (float pixels), and a predicted point in one output format."""
    width, height = draw(SCREENS)
    bw = draw(st.floats(2, max(2.0, width / 4)))
    bh = draw(st.floats(2, max(2.0, height / 4)))
    x1 = draw(st.floats(0, width - bw))
    y1 = draw(st.floats(0, height - bh))
    box = (x1, y1, x1 + bw, y1 + bh)
    where = draw(st.sampled_from(["inside", "edge", "corner", "near", "anywhere"]))
    if where == "inside":
        px, py = draw(st.floats(box[0], box[2])), draw(st.floats(box[1], box[3]))
    elif where == "edge":
        px, py = draw(st.sampled_from([box[0], box[2]])), draw(st.floats(box[1], box[3]))
    elif where == "corner":
        px, py = draw(st.sampled_from([box[0], box[2]])), draw(st.sampled_from([box[1], box[3]]))
    elif where == "near":
        px = min(width, max(0.0, draw(st.floats(box[0] - 3, box[2] + 3))))
        py = min(height, max(0.0, draw(st.floats(box[1] - 3, box[3] + 3))))
    else:
        px, py = draw(st.floats(0, width)), draw(st.floats(0, height))
    fmt = draw(st.sampled_from(["click", "pyautogui", "qwen3vl", "mai-ui", "ui-tars-1.5", "error"]))
    group = draw(st.sampled_from(["CAD", "Dev", "Creative"]))
    ui_type = draw(st.sampled_from(["text", "icon"]))
    return (width, height), box, (px, py), fmt, {"group": group, "ui_type": ui_type}


def _grounding_output(fmt: str, point, size) -> tuple[str, tuple[float, float] | None]:
    """The output text and the pixel it names, by the test's own arithmetic (None: a format error)."""
    (px, py), (w, h) = point, size
    if fmt == "pyautogui" and min(px, py) < 1:
        fmt = "click"  # pyautogui floats all within 0–1 are Aguvis' 0–1 answers, not pixels
    if fmt == "click":  # the data's own convention: pixels, as written
        return f"click({px!r}, {py!r})", (px, py)
    if fmt == "pyautogui":
        return f"Action: pyautogui.click(x={px!r}, y={py!r}).", (px, py)
    if fmt == "ui-tars-1.5":
        return f"Thought: there.\nAction: click(point='<point>{px!r} {py!r}</point>')<|im_end|>", (px, py)
    if fmt == "qwen3vl":
        qx, qy = round(px / w * 1000), round(py / h * 1000)
        return json.dumps([{"point_2d": [qx, qy], "label": "x"}]), (qx / 1000 * w, qy / 1000 * h)
    if fmt == "mai-ui":
        mx, my = round(px / w * 999), round(py / h * 999)
        return f'<answer>{{"coordinate": [{mx}, {my}]}}</answer>', (mx / 999 * w, my / 999 * h)
    return "I cannot find it.", None


def _in_box(pixel, box) -> bool:
    return box[0] <= pixel[0] <= box[2] and box[1] <= pixel[1] <= box[3]


def _clear_of_edges(pixel, box, tolerance=1e-6) -> bool:
    return all(abs(pixel[i % 2] - edge) > tolerance for i, edge in enumerate(box))


@SETTINGS
@given(st.lists(grounding_cases(), min_size=4, max_size=12))
def test_screenspot_pro_point_in_box_and_its_splits(folder, cases):
    rows, expected = [], []
    for size, box, point, fmt, categories in cases:
        center = ((box[0] + box[2]) / 2, (box[1] + box[3]) / 2)
        rows.append(_row(folder, f"click({center[0]!r}, {center[1]!r})", size, box, categories))
        output, pixel = _grounding_output(fmt, point, size)
        if pixel is not None and fmt in ("qwen3vl", "mai-ui"):
            assume(_clear_of_edges(pixel, box))  # a converted point on an edge is a float-rounding coin toss
        expected.append((output, pixel is not None and _in_box(pixel, box), pixel is None, categories))
    goals = _goals(folder, rows, "pixels")
    outcomes = [scoring.score(output, goal) for (output, *_), goal in zip(expected, goals, strict=True)]
    assert [o.click for o in outcomes] == [hit for _, hit, _, _ in expected]
    assert [o.format_error for o in outcomes] == [error for _, _, error, _ in expected]
    report = scoring.summarize(outcomes, by=["group", "ui_type"])
    assert report["click_acc"] == pytest.approx(sum(hit for _, hit, _, _ in expected) / len(expected))
    for name in ("group", "ui_type"):
        for value, block in report["by"][name].items():
            mine = [hit for _, hit, _, c in expected if c[name] == value]
            assert (block["n"], block["click_acc"]) == (len(mine), pytest.approx(sum(mine) / len(mine)))


# -- AndroidControl / MAI-UI navigation ----------------------------------------------------------------

KINDS = ["click", "long_press", "type", "swipe", "system_button", "open", "wait", "terminate"]
OPPOSITE = {"up": "down", "down": "up", "left": "right", "right": "left"}
WORDS = st.text(alphabet="abcAB XYz()'\"é中.", min_size=1, max_size=12)


@st.composite
def steps(draw):
    """A reference MAI-UI step (0–999) and a prediction in one of the formats, with the test's own
    description of each: ``(kind, point in pixels, text, finger direction, button, status)``."""
    size = draw(SCREENS)
    ref_kind = draw(st.sampled_from(KINDS))
    pred_kind = draw(st.sampled_from([ref_kind] * 3 + KINDS + ["error"]))
    ref_point = (draw(st.integers(0, 999)), draw(st.integers(0, 999)))
    spread = draw(st.sampled_from([20, 150, 400]))
    pred_point = tuple(min(999, max(0, v + draw(st.integers(-spread, spread)))) for v in ref_point)
    ref_text = draw(WORDS)
    pred_text = draw(
        st.sampled_from(
            [
                ref_text,
                ref_text.upper(),
                f"  {ref_text}\n",
                ref_text[: max(1, len(ref_text) // 2)],
                f"{ref_text} please",
                ref_text.replace(" ", "  "),
            ]
        )
        | WORDS
    )
    ref_way, pred_way = draw(st.sampled_from(list(OPPOSITE))), draw(st.sampled_from(list(OPPOSITE)))
    ref_button, pred_button = draw(st.sampled_from(["back", "home"])), draw(st.sampled_from(["back", "home"]))
    ref_status, pred_status = (draw(st.sampled_from(["success", "fail"])) for _ in range(2))
    writer = draw(st.sampled_from(["mai-ui", "other"]))
    ref = _step(ref_kind, "mai-ui", ref_point, ref_text, ref_way, ref_button, ref_status)
    pred = _step(pred_kind, writer, pred_point, pred_text, pred_way, pred_button, pred_status)
    return size, ref, pred


def _step(kind, writer, point, text, finger, button, status):
    """``(output text, the test's description)``; ``writer`` "other" uses UI-TARS / pyautogui where they
    have the action (UI-TARS' scroll names the view's direction: the finger's opposite)."""
    description = {"kind": kind, "point": point, "text": text, "finger": finger, "button": button}
    description["status"] = status
    if kind == "error":
        return "I would rather not.", description
    if writer == "other" and kind == "type":
        return "Action: type(content=" + repr(text) + ")", description
    if writer == "other" and kind == "swipe":
        return f"scroll(start_box='(500,500)', direction='{OPPOSITE[finger]}')", {
            **description,
            "kind": "swipe",
        }
    if writer == "other" and kind == "wait":
        return "wait()", description
    arguments = {"action": kind}
    if kind in ("click", "long_press"):
        arguments["coordinate"] = list(point)
    elif kind in ("type", "open"):
        arguments["text"] = text
    elif kind == "swipe":
        arguments["direction"] = finger
    elif kind == "system_button":
        arguments["button"] = button
    elif kind == "terminate":
        arguments["status"] = status
    return _tool(**arguments), description


def _expected(ref: dict, pred: dict, size) -> tuple[bool, bool]:
    """(type right, step right) by AITW/AndroidControl's rules, in pixels of a ``size`` screen."""
    if pred["kind"] == "error" or pred["kind"] != ref["kind"]:
        return False, False
    kind, (w, h) = ref["kind"], size
    if kind in ("click", "long_press"):
        (ax, ay), (bx, by) = ((v[0] / 999 * w, v[1] / 999 * h) for v in (pred["point"], ref["point"]))
        distance = math.hypot((ax - bx) / w, (ay - by) / h)  # fractions of the screen's width and height
        assume(abs(distance - 0.14) > 1e-9)
        return True, distance <= 0.14
    if kind in ("type", "open"):
        a, b = pred["text"].lower().strip(), ref["text"].lower().strip()
        return True, a in b or b in a
    if kind == "swipe":
        return True, pred["finger"] == ref["finger"]
    if kind == "system_button":
        return True, pred["button"] == ref["button"]
    if kind == "terminate":
        return True, pred["status"] == ref["status"]
    return True, True


@SETTINGS
@given(st.lists(steps(), min_size=4, max_size=12))
def test_androidcontrol_type_and_step_match(folder, cases):
    rows = [_row(folder, ref_text, size) for size, (ref_text, _), _ in cases]
    goals = _goals(folder, rows, "mai-ui")
    got, wanted = [], []
    for goal, (size, (_, ref), (output, pred)) in zip(goals, cases, strict=True):
        wanted.append(_expected(ref, pred, size))
        outcome = scoring.score(output, goal)
        got.append((outcome.type, outcome.step))
    assert got == wanted
    report = scoring.summarize([scoring.score(o, g) for g, (_, _, (o, _)) in zip(goals, cases, strict=True)])
    assert report["step_acc"] == pytest.approx(sum(step for _, step in wanted) / len(wanted))


@st.composite
def typed_pairs(draw):
    """A reference text and a prediction written from it the ways models get it almost right."""
    words = draw(st.lists(st.text(alphabet="abcXYZé中'()", min_size=1, max_size=5), min_size=1, max_size=4))
    reference = " ".join(words)
    change = draw(st.sampled_from(["same", "case", "outer", "inner", "part", "more", "other"]))
    predicted = {
        "same": reference,
        "case": reference.swapcase(),
        "outer": f" \t{reference}\n ",
        "inner": reference.replace(" ", "   ") if " " in reference else reference + "   x",
        "part": reference[: draw(st.integers(1, len(reference)))],
        "more": reference + draw(st.text(alphabet="abc ", min_size=1, max_size=4)),
        "other": draw(st.text(alphabet="pqr s", min_size=1, max_size=6)),
    }[change]
    return reference, predicted, draw(st.sampled_from(["type", "open", "answer"]))


@SETTINGS
@given(st.lists(typed_pairs(), min_size=3, max_size=12))
def test_the_text_rule_lower_strip_and_containment(folder, pairs):
    rows = [_row(folder, _tool(action=kind, text=ref), (1080, 2400)) for ref, _, kind in pairs]
    goals = _goals(folder, rows, "mai-ui")
    for goal, (ref, pred, kind) in zip(goals, pairs, strict=True):
        a, b = pred.lower().strip(), ref.lower().strip()
        outcome = scoring.score(_tool(action=kind, text=pred), goal)
        assert (outcome.type, outcome.step) == (True, a in b or b in a), (ref, pred)


@st.composite
def pixel_clicks(draw):
    width, height = draw(SCREENS)
    # from 1 px: pyautogui floats all within 0–1 are Aguvis' 0–1 answers, not pixels
    ref = (draw(st.floats(1, width)), draw(st.floats(1, height)))
    fraction = draw(st.floats(0, 0.3))
    angle = draw(st.floats(0, 2 * math.pi))
    pred = (ref[0] + fraction * math.cos(angle) * width, ref[1] + fraction * math.sin(angle) * height)
    assume(1 <= pred[0] <= width and 1 <= pred[1] <= height)
    return (width, height), ref, pred, draw(st.sampled_from(["pyautogui", "qwen3vl"]))


@SETTINGS
@given(st.lists(pixel_clicks(), min_size=3, max_size=10))
def test_the_distance_rule_in_pixels_of_any_screen(folder, cases):
    """A pixel reference with no box: 0.14 in fractions of width and height, whatever the output's
    convention (a Qwen3-VL 0–1000 answer is converted on the record's own screen)."""
    rows = [_row(folder, f"pyautogui.click(x={r[0]!r}, y={r[1]!r})", size) for size, r, _, _ in cases]
    goals = _goals(folder, rows, "pixels")
    for goal, (size, ref, pred, fmt) in zip(goals, cases, strict=True):
        if fmt == "qwen3vl":
            q = (round(pred[0] / size[0] * 1000), round(pred[1] / size[1] * 1000))
            output, pred = json.dumps({"point_2d": list(q)}), (q[0] / 1000 * size[0], q[1] / 1000 * size[1])
        else:
            output = f"pyautogui.click(x={pred[0]!r}, y={pred[1]!r})"
        distance = math.hypot((pred[0] - ref[0]) / size[0], (pred[1] - ref[1]) / size[1])
        assume(abs(distance - 0.14) > 1e-9)
        outcome = scoring.score(output, goal)
        assert (outcome.click, outcome.step) == (distance <= 0.14, distance <= 0.14), (output, size, ref)


# -- references that name no action --------------------------------------------------------------------

PROSE = st.text(alphabet="abcdefgh ,.!?éA", min_size=1, max_size=40).filter(lambda t: t.strip())


@SETTINGS
@given(st.lists(st.booleans(), min_size=2, max_size=6), PROSE)
def test_a_reference_with_no_action_is_an_error_naming_its_line(folder, prose_rows, prose):
    assume(any(prose_rows))
    rows = [_row(folder, prose if p else "click(1, 2)", (64, 64)) for p in prose_rows]
    path = folder / f"refs{next(_COUNTER)}.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    records = samples.read(path, coordinates="pixels")
    line = prose_rows.index(True) + 1
    with pytest.raises(DataError) as raised:
        scoring.goals(records, "pixels")
    assert raised.value.where == f"{path}:{line}" and "names no action" in raised.value.message


def test_raylora_score_exits_2_on_a_reference_with_no_action(folder):
    data = folder / "free_text.jsonl"  # the second record has no prediction: its reference is still read
    answers = ["click(1, 2)", "The gear icon, top right."]
    data.write_text("".join(json.dumps(_row(folder, a, (64, 64))) + "\n" for a in answers))
    predictions = folder / "free_text_predictions.jsonl"
    predictions.write_text(json.dumps({"index": 0, "output": "click(1, 2)"}) + "\n")
    raylora = str(Path(sys.executable).with_name("raylora"))
    proc = subprocess.run(
        [raylora, "score", str(predictions), "--data", str(data)], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr and f"{data}:2: the reference answer" in proc.stderr, proc.stderr


def test_validate_names_eval_references_with_no_action(folder):
    """A study that generates answers on its eval data checks the references before anything starts."""
    from raylora import spec as spec_lib
    from raylora.errors import UserError
    from raylora.train import preflight

    data = folder / "eval_free_text.jsonl"
    answers = ["click(10, 20)", "The gear icon.", "click(1, 2)", "Nothing to do here"]
    data.write_text("".join(json.dumps(_row(folder, a, (64, 64))) + "\n" for a in answers))
    quickstart = Path(__file__).resolve().parents[1] / "search_spaces" / "quickstart.yaml"
    overrides = [f"data.eval={data}", "data.coordinates=pixels"]
    with pytest.raises(UserError) as raised:
        preflight.local_inputs(spec_lib.load(quickstart, overrides))
    lines = raised.value.lines()
    assert [line.split(": ")[0] for line in lines] == [f"{data}:2", f"{data}:4"], lines
    preflight.local_inputs(spec_lib.load(quickstart, [*overrides, "training.click_eval_samples=0"]))
