"""Scoring GUI-agent outputs: every output format parsed to the right action, exact counts, Wilson
intervals against known values, per-category splits, format errors, McNemar, and `raylora score` /
`raylora eval` as a user runs them."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from raylora.data import actions, scoring

ROOT = Path(__file__).resolve().parents[1]
RAYLORA = [str(Path(sys.executable).with_name("raylora"))]

TOOL = '<tool_call>{{"name": "mobile_use", "arguments": {args}}}</tool_call>'


def tool(**args) -> str:
    return TOOL.format(args=json.dumps(args))


# -- parsing: every format ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "kind", "fmt", "point"),
    [
        ("click(412, 230)", "click", "click", (412, 230)),
        ("I would click( 1.5 ,2 ) there", "click", "click", (1.5, 2)),
        ("pyautogui.click(x=100, y=200)", "click", "pyautogui", (100, 200)),
        ("pyautogui.moveTo(5, 5)\npyautogui.click(100, 200)", "click", "pyautogui", (100, 200)),
        ('<answer>{"coordinate": [500, 400]}</answer>', "click", "mai-ui", (500, 400)),
        (
            '<grounding_think>the gear icon</grounding_think><answer>{"coordinate": [9, 8]}</answer>',
            "click",
            "mai-ui",
            (9, 8),
        ),
        (
            "<thinking>tap it</thinking>\n" + tool(action="click", coordinate=[10, 20]),
            "click",
            "mai-ui-nav",
            (10, 20),
        ),
        (tool(action="long_press", coordinate=[1, 2]), "long_press", "mai-ui-nav", (1, 2)),
        (tool(action="click", coordinate=[10, 20, 30, 40]), "click", "mai-ui-nav", (20, 30)),
        ('{"point_2d": [100, 200]}', "click", "qwen3vl", (100, 200)),
        ('[{"bbox_2d": [100, 200, 300, 400], "label": "OK"}]', "click", "qwen3vl", (200, 300)),
        ('```json\n[\n  {"point_2d": [5, 6], "label": "Save"}\n]\n```', "click", "qwen3vl", (5, 6)),
        ('It is here: {"point_2d": [7, 8]}.', "click", "qwen3vl", (7, 8)),
        ("Thought: the button.\nAction: click(start_box='(100,200)')", "click", "ui-tars", (100, 200)),
        ("click(start_box='<|box_start|>(10,20)<|box_end|>')", "click", "ui-tars", (10, 20)),
        ("click(start_box='[10, 20, 30, 40]')", "click", "ui-tars", (20, 30)),
        ("click(point='<point>12 34</point>')", "click", "ui-tars", (12, 34)),
        ("<|box_start|>(10,20),(30,40)<|box_end|>", "click", "ui-tars", (20, 30)),
        ("<|box_start|>(10,20)<|box_end|>", "click", "ui-tars", (10, 20)),
        ("long_press(start_box='(3,4)')", "long_press", "ui-tars", (3, 4)),
    ],
)
def test_every_format_parses_to_its_point(text, kind, fmt, point):
    action = actions.parse(text)
    assert action is not None, text
    assert (action.type, action.format, action.point) == (kind, fmt, tuple(float(v) for v in point))


def test_the_mai_ui_action_space():
    assert actions.parse(tool(action="swipe", direction="Up")).direction == "up"
    drag = actions.parse(tool(action="drag", start_coordinate=[1, 2], end_coordinate=[3, 4]))
    assert (drag.type, drag.point, drag.end) == ("drag", (1.0, 2.0), (3.0, 4.0))
    assert actions.parse(tool(action="type", text="hi there")).text == "hi there"
    assert actions.parse(tool(action="open", text="Chrome")).text == "Chrome"
    assert actions.parse(tool(action="system_button", button="Back")).button == "back"
    assert actions.parse(tool(action="wait")).type == "wait"
    assert actions.parse(tool(action="terminate", status="success")).status == "success"
    assert actions.parse(tool(action="answer", text="42")).text == "42"
    assert actions.parse("</think>" + tool(action="wait")).type == "wait"  # a thinking model's output


def test_ui_tars_and_pyautogui_actions():
    assert actions.parse("type(content='hello')").text == "hello"
    back = actions.parse("Thought: go back\nAction: press_back()")
    assert (back.type, back.button) == ("system_button", "back")
    scroll = actions.parse("scroll(start_box='(1,2)', direction='down')")
    assert (scroll.type, scroll.direction) == ("scroll", "down")
    assert actions.parse("open_app(app_name='Chrome')").text == "Chrome"
    assert actions.parse("finished()").type == "terminate"
    assert actions.parse('pyautogui.write("hi")').text == "hi"
    assert actions.parse('pyautogui.hotkey("ctrl", "c")').text == "ctrl+c"


@pytest.mark.parametrize(
    "text",
    [
        "",
        "The OK button is at the top right.",
        "tap(1, 2)",
        "<tool_call>{not json}</tool_call>",
        tool(action="click"),  # a click with nowhere to click
        '<answer>{"coordinate": "top"}</answer>',
        '{"point_2d": "center"}',
        "click(start_box='')",
    ],
)
def test_anything_else_is_a_format_error(text):
    assert actions.parse(text) is None


def test_format_native_conventions_are_converted_unless_the_data_uses_that_format():
    mai = actions.parse('<answer>{"coordinate": [999, 0]}</answer>')
    assert actions.in_convention(mai, "qwen3vl").point == pytest.approx((1000.0, 0.0))
    assert actions.in_convention(mai, "qwen3vl", reference_format="mai-ui").point == (999.0, 0.0)
    qwen = actions.parse('{"point_2d": [500, 250]}')
    assert actions.in_convention(qwen, "pixels", size=(200, 100)).point == pytest.approx((100.0, 25.0))
    assert actions.in_convention(qwen, "pixels").point == (500.0, 250.0)  # no size: read as written
    assert actions.in_convention(qwen, "resized-pixels", size=(200, 100)).point == (500.0, 250.0)
    click = actions.parse("click(500, 250)")  # fixes no convention: always the data's
    assert actions.in_convention(click, "pixels", size=(200, 100)).point == (500.0, 250.0)


# -- statistics --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("k", "n", "expected"),
    [(4, 5, (0.3755, 0.9638)), (0, 10, (0.0, 0.2775)), (5, 10, (0.2366, 0.7634))],
)
def test_wilson_intervals_match_known_values(k, n, expected):
    assert scoring.wilson(k, n) == pytest.approx(list(expected), abs=5e-5)


def test_wilson_of_nothing_is_none():
    assert scoring.wilson(0, 0) is None


def test_mcnemar_exact_and_chi_square():
    a = [True] * 10 + [True] + [False] * 5 + [False] * 4
    b = [True] * 10 + [False] + [True] * 5 + [False] * 4
    exact = scoring.mcnemar(a, b)
    assert (exact["a_only"], exact["b_only"], exact["method"]) == (1, 5, "exact")
    assert exact["p_value"] == pytest.approx(2 * 7 / 64)
    big = scoring.mcnemar([True] * 30 + [False] * 10, [False] * 30 + [True] * 10)
    assert big["method"] == "chi2" and big["p_value"] == pytest.approx(0.002663, abs=1e-6)
    assert scoring.mcnemar([True, False], [True, False])["p_value"] == 1.0
    with pytest.raises(ValueError):
        scoring.mcnemar([True], [True, False])


# -- a held-out file in every format, scored through `raylora score` ---------------------------------


def _record(answer: str, *, bbox=None, categories=None, image="shot.png", **extra) -> dict:
    row = {
        "messages": [
            {
                "role": "user",
                "content": [{"type": "image", "image": image}, {"type": "text", "text": "do it"}],
            },
            {"role": "assistant", "content": [{"type": "text", "text": answer}]},
        ],
        **extra,
    }
    if bbox is not None:
        row["bbox"] = bbox
    if categories is not None:
        row["categories"] = categories
    return row


# (reference record, model output); the expected results are worked out in the test below.
CASES = [
    # grounding, qwen3vl 0–1000
    (
        _record(
            "click(500, 500)", bbox=[400, 400, 600, 600], categories={"data_type": "text", "platform": "web"}
        ),
        '```json\n[{"point_2d": [450, 550], "label": "OK"}]\n```',
    ),
    (
        _record("click(50, 50)", bbox=[0, 0, 100, 100], categories={"data_type": "icon", "platform": "web"}),
        '<answer>{"coordinate": [50, 50]}</answer>',
    ),
    (
        _record(
            "click(150, 150)",
            bbox=[100, 100, 200, 200],
            categories={"data_type": "icon", "platform": "mobile"},
        ),
        "Thought: the gear.\nAction: click(start_box='(150,150)')",
    ),
    (
        _record(
            "click(850, 850)",
            bbox=[800, 800, 900, 900],
            categories={"data_type": "text", "platform": "mobile"},
        ),
        "I cannot find it.",
    ),
    (
        _record("click(10, 10)", bbox=[0, 0, 20, 20], categories={"data_type": "icon", "platform": "mobile"}),
        "pyautogui.click(x=500, y=500)",
    ),
    # navigation, MAI-UI tool calls with no box: right within 0.14 in fractions of the screen's width, height
    (
        _record(tool(action="click", coordinate=[500, 500]), image="wide.png", categories={"group": "nav"}),
        "<thinking>the first result</thinking>\n" + tool(action="click", coordinate=[560, 500]),
    ),
    (
        _record(tool(action="click", coordinate=[100, 100]), image="wide.png", categories={"group": "nav"}),
        tool(action="click", coordinate=[300, 100]),
    ),
    (
        _record(tool(action="swipe", direction="up"), categories={"group": "nav"}),
        tool(action="swipe", direction="down"),
    ),
    (
        _record(tool(action="type", text="Hello World"), categories={"group": "nav"}),
        tool(action="type", text="  hello   world "),
    ),
    (
        _record(tool(action="system_button", button="back"), categories={"group": "nav"}),
        "pyautogui.click(x=1, y=2)",
    ),
    (
        _record(tool(action="open", text="Chrome"), categories={"group": "nav"}),
        tool(action="open", text="chrome"),
    ),
    (
        _record(tool(action="terminate", status="success"), categories={"group": "nav"}),
        tool(action="terminate", status="fail"),
    ),
    (_record(tool(action="answer", text="42"), categories={"group": "nav"}), "forty-two"),
]


@pytest.fixture(scope="module")
def held_out(tmp_path_factory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("held_out")
    Image.new("RGB", (64, 64)).save(folder / "shot.png")
    Image.new("RGB", (1000, 500)).save(folder / "wide.png")
    data = folder / "eval.jsonl"
    data.write_text("".join(json.dumps(record) + "\n" for record, _ in CASES))
    predictions = folder / "predictions.jsonl"
    predictions.write_text(
        "".join(json.dumps({"index": i, "output": o}) + "\n" for i, (_, o) in enumerate(CASES))
    )
    return data, predictions


def _score(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*RAYLORA, "score", *args], capture_output=True, text=True, cwd=ROOT, timeout=120)


def test_raylora_score_json_exact_counts_intervals_and_splits(held_out):
    data, predictions = held_out
    proc = _score(str(predictions), "--data", str(data), "--json")
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    # clicks: rows 0–6; hits 0 (qwen3vl fenced list), 1 (MAI-UI 0–999 → 50.05), 2 (UI-TARS), 5 (0.06 of the
    # width off, within 0.14); misses 3 (format error), 4 (outside the box), 6 (0.2 of the width off)
    assert (report["n"], report["click_n"], report["click_acc"]) == (13, 7, pytest.approx(4 / 7))
    assert report["click_acc_ci"] == pytest.approx(scoring.wilson(4, 7))
    assert report["click_acc_ci"] == pytest.approx([0.2505, 0.8418], abs=5e-5)
    # navigation: rows 5–12; type right 5, 6, 7, 8, 10, 11; step right 5, 10 (row 8 types "hello   world":
    # the AndroidControl harnesses lower-case and strip the text but keep its inner spaces, so not a match)
    assert (report["nav_n"], report["type_acc"], report["step_acc"]) == (8, 6 / 8, 2 / 8)
    assert report["step_acc_ci"] == pytest.approx(scoring.wilson(2, 8))
    assert (report["format_errors"], report["format_error_rate"]) == (2, pytest.approx(2 / 13))
    assert (report["unscored"], report["unanswered"]) == (0, 0)
    by = report["by"]
    assert {k: (v["n"], v["click_acc"]) for k, v in by["data_type"].items()} == {
        "icon": (3, pytest.approx(2 / 3)),
        "text": (2, 0.5),
    }
    assert {k: (v["n"], v["click_acc"]) for k, v in by["platform"].items()} == {
        "mobile": (3, pytest.approx(1 / 3)),
        "web": (2, 1.0),
    }
    assert by["platform"]["web"]["click_acc_ci"] == pytest.approx([0.3424, 1.0], abs=5e-5)
    nav = by["group"]["nav"]
    assert (nav["n"], nav["click_acc"], nav["type_acc"], nav["step_acc"], nav["format_errors"]) == (
        8,
        0.5,
        0.75,
        0.25,
        1,
    )


def test_raylora_score_against_a_base_models_predictions(held_out, tmp_path):
    data, predictions = held_out
    base = tmp_path / "base.jsonl"
    base.write_text("".join(json.dumps({"index": i, "output": "no idea"}) + "\n" for i in range(len(CASES))))
    proc = _score(str(predictions), "--data", str(data), "--against", str(base), "--json")
    assert proc.returncode == 0, proc.stderr
    against = json.loads(proc.stdout)["against"]
    click, step = against["click_acc"], against["step_acc"]
    assert (click["n"], click["new"], click["old"], click["a_only"], click["b_only"]) == (7, 4 / 7, 0.0, 4, 0)
    assert click["p_value"] == pytest.approx(2 / 16) and click["method"] == "exact"
    assert (step["n"], step["gain"], step["a_only"], step["p_value"]) == (8, 2 / 8, 2, pytest.approx(2 / 4))
    assert against["type_acc"]["p_value"] == pytest.approx(2 / 64)
    human = _score(str(predictions), "--data", str(data), "--against", str(base))
    assert "click_acc against the other predictions: 0.571 vs 0.000 on 7 records, gain +0.571" in human.stdout


def test_raylora_score_human_output_and_ids(held_out, tmp_path):
    data, _ = held_out
    with_ids = tmp_path / "ids.jsonl"
    rows = [{**record, "id": f"r{i}"} for i, (record, _) in enumerate(CASES)]
    for row in rows:
        row["messages"][0]["content"][0]["image"] = str(
            data.parent / row["messages"][0]["content"][0]["image"]
        )
    with_ids.write_text("".join(json.dumps(r) + "\n" for r in rows))
    predictions = tmp_path / "p.jsonl"
    predictions.write_text(json.dumps({"id": "r1", "output": CASES[1][1]}) + "\n")
    proc = _score(str(predictions), "--data", str(with_ids))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("n 1 · click_acc 1.000 [0.207, 1.000] · format errors 0"), proc.stdout
    assert "12 records without a prediction" in proc.stdout


def test_pixel_data_reads_a_qwen3vl_answer_on_the_image(tmp_path):
    Image.new("RGB", (200, 100)).save(tmp_path / "s.png")
    data = tmp_path / "d.jsonl"
    data.write_text(json.dumps(_record("click(100, 50)", bbox=[90, 40, 110, 60], image="s.png")) + "\n")
    goal = scoring.goal(
        __import__("raylora.data.samples", fromlist=["read"]).read(data, coordinates="pixels")[0], "pixels"
    )
    assert goal.size == (200, 100)
    assert scoring.score('{"point_2d": [500, 500]}', goal).click is True  # (100, 50) px
    assert scoring.score('{"point_2d": [600, 500]}', goal).click is False  # (120, 50) px
    assert scoring.score("click(100, 50)", goal).click is True  # the data's own convention


@pytest.mark.parametrize(
    ("line", "needle"),
    [
        ('{"index": 99, "output": "click(1, 2)"}', "p.jsonl:2: index 99 is not a record"),
        ('{"id": "nope", "output": "click(1, 2)"}', "p.jsonl:2: id 'nope' is not a record"),
        ('{"index": 1}', 'p.jsonl:2: needs "output"'),
        ('{"index": 1, "output": ', "p.jsonl:2: not a JSON object"),
        ('{"output": "click(1, 2)"}', 'p.jsonl:2: needs "index"'),
        ('{"index": 0, "output": "again"}', "p.jsonl:2: a second prediction for record 0"),
    ],
)
def test_bad_predictions_exit_2_naming_file_and_line(held_out, tmp_path, line, needle):
    data, _ = held_out
    predictions = tmp_path / "p.jsonl"
    predictions.write_text('{"index": 0, "output": "click(1, 2)"}\n' + line + "\n")
    proc = _score(str(predictions), "--data", str(data), "--json")
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr and needle in proc.stderr, proc.stderr


def test_unknown_template_or_coordinates_exit_2(held_out):
    data, predictions = held_out
    proc = _score(str(predictions), "--data", str(data), "--template", "nope")
    assert proc.returncode == 2 and "--template: unknown answer template 'nope'" in proc.stderr, proc.stderr
    proc = _score(str(predictions), "--data", str(data), "--coordinates", "nope")
    assert proc.returncode == 2 and "--coordinates: unknown coordinate convention" in proc.stderr, proc.stderr


def test_trainer_rates_are_the_same_numbers(held_out):
    data, predictions = held_out
    from raylora.data import samples

    records = samples.read(data)
    outputs = scoring.read_predictions(predictions, records)
    results = [scoring.score(outputs[i], scoring.goal(r, "qwen3vl")) for i, r in enumerate(records)]
    rates = scoring.rates(scoring.counts(results), prefix="eval/")
    assert rates == pytest.approx(
        {
            "eval/click_acc": 4 / 7,
            "eval/format_error_rate": 2 / 13,
            "eval/type_acc": 0.75,
            "eval/step_acc": 0.25,
        }
    )
    assert not math.isnan(sum(rates.values()))


# -- raylora eval on the built-in model --------------------------------------------------------------


@pytest.mark.slow
def test_raylora_eval_on_the_builtin_model(tmp_path, raylora_cli):
    out = tmp_path / "predictions.jsonl"
    code, stdout, err = raylora_cli(
        "eval", "builtin:tiny-qwen3-vl", "--data", "builtin:gui-grounding", "--limit", "6",
        "--batch-size", "4", "--max-new-tokens", "8", "--json", "--predictions-out", str(out),
    )  # fmt: skip
    assert code == 0, err
    report = json.loads(stdout)
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert [row["index"] for row in lines] == list(range(6))
    assert report["n"] == 6 and report["click_n"] == 6
    # Batched, left-padded generation answers as one record at a time does (raylora predict's path).
    from raylora import builtin
    from raylora.data import samples
    from raylora.tracking import serving
    from raylora.train import inference

    predictor = inference.Predictor.load("builtin:tiny-qwen3-vl")
    assert not predictor.model.use_kernels  # no Hub kernels for a base model (see model.from_pretrained)
    records = samples.read(builtin.resolve_data("builtin:gui-grounding", "eval"), 6)
    assert [row["output"] for row in lines] == [serving.answer_record(predictor, r, 8) for r in records]
    # The same outputs scored again with no model give the same report.
    rescored = _score(str(out), "--data", "builtin:gui-grounding", "--json")
    assert rescored.returncode == 0, rescored.stderr
    again = json.loads(rescored.stdout)
    again["unanswered"] = 0
    assert again == report


# -- the objective -----------------------------------------------------------------------------------


@pytest.mark.parametrize("metric", ["eval/click_acc", "eval/type_acc", "eval/step_acc"])
def test_accuracies_can_be_the_objective_with_mode_max(metric):
    from raylora import spec as spec_lib
    from raylora.errors import UserError

    quickstart = ROOT / "search_spaces" / "quickstart.yaml"
    chosen = spec_lib.load(quickstart, [f"study.objective.metric={metric}", "study.objective.mode=max"])
    assert chosen.study.objective.metric == metric
    with pytest.raises(UserError, match=f"study.objective.mode: {metric} is better higher: use mode: max"):
        spec_lib.load(quickstart, [f"study.objective.metric={metric}"])
    with pytest.raises(UserError, match="needs training.click_eval_samples > 0"):
        spec_lib.load(
            quickstart,
            [f"study.objective.metric={metric}", "study.objective.mode=max", "training.click_eval_samples=0"],
        )


def test_format_error_rate_is_an_objective_to_minimize():
    from raylora import spec as spec_lib

    quickstart = ROOT / "search_spaces" / "quickstart.yaml"
    chosen = spec_lib.load(quickstart, ["study.objective.metric=eval/format_error_rate"])
    assert chosen.study.objective.mode == "min"
