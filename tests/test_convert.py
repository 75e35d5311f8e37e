"""``raylora data convert`` on samples written here in each dataset's published layout: AndroidControl
(GZIP TFRecord of tf.train.Example, built with a hand-written protobuf encoder), GUI-Odyssey, Aguvis,
OS-Atlas and ShowUI. Each converted file is validated, its references score 1.0 against themselves, and its
reference points land on the source annotation's pixel (computed here by plain arithmetic)."""

from __future__ import annotations

import gzip
import io
import json
import struct
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image
from typer.testing import CliRunner

from raylora import cli
from raylora.data import convert, samples
from raylora.errors import DataError

ROOT = Path(__file__).resolve().parents[1]


# -- writing the published layouts -------------------------------------------------------------------


def _png(size, color="white") -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, color).save(buffer, format="PNG")
    return buffer.getvalue()


def _save(path: Path, size, color="white") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(_png(size, color))
    return path


def _varint(n: int) -> bytes:
    out = b""
    while True:
        byte, n = n & 0x7F, n >> 7
        out += bytes([byte | (0x80 if n else 0)])
        if not n:
            return out


def _field(number: int, payload: bytes | int) -> bytes:
    if isinstance(payload, int):
        return _varint(number << 3) + _varint(payload)
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def _example(features: dict) -> bytes:
    """tf.train.Example{features{feature: map<string, Feature>}}; Feature{bytes_list=1 | int64_list=3}."""
    entries = b""
    for name, values in features.items():
        if isinstance(values[0], int):
            feature = _field(3, _field(1, b"".join(_varint(v) for v in values)))  # packed int64s
        else:
            feature = _field(1, b"".join(_field(1, v) for v in values))
        entries += _field(1, _field(1, name.encode()) + _field(2, feature))
    return _field(1, entries)


def _crc32c(data: bytes) -> int:
    crc = 0xFFFFFFFF
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ (0x82F63B78 * (crc & 1))
    return crc ^ 0xFFFFFFFF


def _masked(data: bytes) -> int:
    crc = _crc32c(data)
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def _tfrecord(path: Path, records: list[bytes]) -> Path:
    with gzip.open(path, "wb") as f:
        for data in records:
            length = struct.pack("<Q", len(data))
            f.write(length + struct.pack("<I", _masked(length)) + data + struct.pack("<I", _masked(data)))
    return path


def _forest(nodes: list[tuple[int, int, int, int]]) -> bytes:
    """AndroidAccessibilityForest{windows=1{tree=11{nodes=1{bounds_in_screen=2, is_visible_to_user=23}}}}."""
    tree = b"".join(
        _field(
            1,
            _field(2, b"".join(_field(k, v) for k, v in zip((1, 2, 3, 4), box, strict=True))) + _field(23, 1),
        )
        for box in nodes
    )
    return _field(1, _field(11, tree))


def _episode(episode_id: int, size=(100, 200)) -> bytes:
    w, h = size
    actions = [
        {"action_type": "click", "x": 40, "y": 60},
        {"action_type": "scroll", "direction": "down"},
        {"action_type": "input_text", "text": "milk"},
        {"action_type": "navigate_back"},
    ]
    return _example(
        {
            "episode_id": [episode_id],
            "goal": [b"Add milk to the shopping list"],
            "screenshots": [_png(size, c) for c in ("white", "red", "green", "blue", "black")],
            "screenshot_widths": [w] * 5,
            "screenshot_heights": [h] * 5,
            "accessibility_trees": [_forest([(0, 0, w, h), (20, 40, 60, 80)])] * 5,
            "actions": [json.dumps(a).encode() for a in actions],
            "step_instructions": [b"Tap the list", b"Scroll down", b"Type milk", b"Go back"],
        }
    )


# -- checks --------------------------------------------------------------------------------------------


def _lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def _answer(row: dict) -> str:
    return row["messages"][-1]["content"]


def _tool_args(row: dict) -> dict:
    text = _answer(row)
    return json.loads(text.split("<tool_call>")[1].split("</tool_call>")[0])["arguments"]


def _round_trip(out: Path, template: str, coords: str = "qwen3vl") -> dict:
    """Validate the converted file, then score its references against themselves through the CLI."""
    assert samples.problems(out, coordinates=coords, template=template) == []
    predictions = out.with_suffix(".predictions.jsonl")
    rows = _lines(out)
    predictions.write_text(
        "".join(json.dumps({"index": i, "output": _answer(r)}) + "\n" for i, r in enumerate(rows))
    )
    args = [
        "score",
        str(predictions),
        "--data",
        str(out),
        "--template",
        template,
        "--coordinates",
        coords,
        "--json",
    ]
    result = CliRunner().invoke(cli.app, args)
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["n"] == len(rows) and report["format_errors"] == 0, report
    assert report["click_acc"] in (None, 1.0) and report.get("step_acc", 1.0) == 1.0, report
    return report


def _convert(*args: str) -> str:
    result = CliRunner().invoke(cli.app, ["data", "convert", *args])
    assert result.exit_code == 0, result.output
    return result.stdout


# -- AndroidControl ------------------------------------------------------------------------------------


def test_androidcontrol_tfrecord_to_mai_ui_steps(tmp_path):
    src = _tfrecord(tmp_path / "android_control-00000-of-00001", [_episode(7)])
    out = tmp_path / "ac.jsonl"
    printed = _convert(str(src), "--from", "androidcontrol", "--out", str(out), "--template", "mai-ui")
    assert printed.splitlines()[0] == f"wrote 4 records to {out} (4 screenshots in ac_images/)"
    assert "actions: click 1, swipe 1, type 1, system_button 1" in printed and "dropped 0" in printed
    rows = _lines(out)
    click, swipe, typed, back = (_tool_args(r) for r in rows)
    # (40, 60) on the 100×200 screenshot in MAI-UI's 0–999: 40/100×999 = 399.6 → 400, 60/200×999 → 300.
    assert click == {"action": "click", "coordinate": [400, 300]}
    assert (round(400 / 999 * 100), round(300 / 999 * 200)) == (40, 60)
    # The reference box is the smallest visible accessibility node holding the point: (20, 40, 60, 80).
    assert rows[0]["bbox"] == [
        round(20 / 100 * 999),
        round(40 / 200 * 999),
        round(60 / 100 * 999),
        round(80 / 200 * 999),
    ]
    assert swipe == {"action": "swipe", "direction": "up"}  # content scrolls down: the finger swipes up
    assert typed == {"action": "type", "text": "milk"} and back == {
        "action": "system_button",
        "button": "back",
    }
    # MAI-UI's history: the last 3 screenshots before the current one, which comes last.
    images = [[i["image"] for i in r["messages"][1]["content"] if i["type"] == "image"] for r in rows]
    assert [len(i) for i in images] == [1, 2, 3, 4]
    assert images[3][-1] == "ac_images/androidcontrol_7_3.png"
    assert Image.open(tmp_path / images[3][-1]).getpixel((0, 0)) == (0, 0, 255)
    assert "Task: Add milk to the shopping list" in json.dumps(rows[0])
    _round_trip(out, "mai-ui")


def test_androidcontrol_low_level_split_and_history(tmp_path):
    folder = tmp_path / "android_control"
    folder.mkdir()
    _tfrecord(folder / "android_control-00000-of-00002", [_episode(7)])
    _tfrecord(folder / "android_control-00001-of-00002", [_episode(8)])
    (folder / "splits.json").write_text(json.dumps({"train": [7], "validation": [], "test": [8]}))
    out = tmp_path / "low.jsonl"
    _convert(str(folder), "--from", "androidcontrol", "--out", str(out), "--split", "test", "--level", "low",
             "--template", "qwen3vl", "--history", "1")  # fmt: skip
    rows = _lines(out)
    assert len(rows) == 4 and all(r["id"].startswith(str(folder / "android_control-00001")) for r in rows)
    assert "Step: Type milk" in json.dumps(rows[2]) and "Add milk" in json.dumps(rows[2])
    assert [sum(i["type"] == "image" for i in r["messages"][1]["content"]) for r in rows] == [1, 2, 2, 2]
    # Qwen3-VL's 0–1000: 40/100×1000 = 400, 60/200×1000 = 300.
    assert _tool_args(rows[0])["coordinate"] == [400, 300]
    _round_trip(out, "qwen3vl")


def test_androidcontrol_without_actions_is_refused_naming_the_feature(tmp_path):
    src = _tfrecord(tmp_path / "bad", [_example({"goal": [b"x"], "screenshots": [_png((8, 8))]})])
    with pytest.raises(
        DataError, match=r"bad:episode 1: not an AndroidControl episode: expected the feature"
    ):
        convert.convert(src, "androidcontrol", tmp_path / "x.jsonl")
    assert not (tmp_path / "x.jsonl").exists()


# -- GUI-Odyssey ---------------------------------------------------------------------------------------


def _odyssey(root: Path, episode: str, size=(200, 400)) -> None:
    for i in range(4):
        _save(root / "screenshots" / f"{episode}_{i}.png", size)
    steps = [
        {"step": 0, "screenshot": f"{episode}_0.png", "action": "CLICK", "info": [[500, 250]], "ps": ""},
        {
            "step": 1,
            "screenshot": f"{episode}_1.png",
            "action": "SCROLL",
            "info": [[500, 800], [500, 200]],
            "ps": "",
        },
        {"step": 2, "screenshot": f"{episode}_2.png", "action": "TEXT", "info": "fashion week", "ps": ""},
        {"step": 3, "screenshot": f"{episode}_3.png", "action": "COMPLETE", "info": "", "ps": "done"},
    ]
    episode_json = {
        "episode_id": episode,
        "device_info": {"product": "sdk", "release_version": "14", "sdk_version": "34", "h": size[1],
                        "w": size[0], "device_name": "Pixel 8 Pro"},
        "task_info": {"category": "Web_Shopping", "app": ["Chrome"], "meta_task": "Search {}",
                      "task": "Search", "instruction": "Search for the next fashion week in Chrome"},
        "step_length": 4,
        "steps": steps,
    }  # fmt: skip
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    (root / "annotations" / f"{episode}.json").write_text(json.dumps(episode_json))


def test_gui_odyssey_episodes(tmp_path):
    _odyssey(tmp_path, "ep1")
    _odyssey(tmp_path, "ep2")
    (tmp_path / "splits").mkdir()
    (tmp_path / "splits" / "random_split.json").write_text(json.dumps({"train": ["ep1"], "test": ["ep2"]}))
    out = tmp_path / "odyssey.jsonl"
    printed = _convert(str(tmp_path), "--from", "gui-odyssey", "--out", str(out), "--split", "train",
                       "--template", "click", "--coordinates", "pixels")  # fmt: skip
    assert "wrote 4 records" in printed
    rows = _lines(out)
    # (500, 250) in 0–1000 on a 200×400 screen is pixel (100, 100).
    assert _tool_args(rows[0]) == {"action": "click", "coordinate": [100, 100]}
    assert _tool_args(rows[1]) == {"action": "swipe", "coordinate": [100, 320], "direction": "up"}
    assert _tool_args(rows[2]) == {"action": "type", "text": "fashion week"}
    assert _tool_args(rows[3]) == {"action": "terminate", "status": "success"}
    assert rows[0]["categories"] == {"category": "Web_Shopping"} and "ep1" in rows[0]["id"]
    _round_trip(out, "click", "pixels")


# -- Aguvis --------------------------------------------------------------------------------------------


def test_aguvis_stage1_grounding_and_stage2_planning(tmp_path):
    _save(tmp_path / "images" / "web.png", (200, 100))
    _save(tmp_path / "images" / "phone.png", (100, 200))
    records = [
        {"image": "web.png", "conversations": [
            {"from": "human", "value": "<image>\nClick the search box"},
            {"from": "gpt", "value": "pyautogui.click(x=0.25, y=0.75)", "recipient": "os", "end_turn": True},
            {"from": "human", "value": "Click the logo"},
            {"from": "gpt", "value": "pyautogui.click(0.1, 0.2)", "recipient": "os", "end_turn": True}]},
        {"image": "phone.png", "conversations": [
            {"from": "system", "value": "You are a GUI agent."},
            {"from": "human",
             "value": "<image>\nInstruction: search milk\n\nPrevious actions:\nStep 1: open app"},
            {"from": "gpt", "value": "Thought: type the query", "recipient": "all", "end_turn": False},
            {"from": "gpt", "value": "pyautogui.write(message='milk')", "recipient": "os"}]},
        {"image": "phone.png", "conversations": [
            {"from": "human", "value": "<image>\nInstruction: see more\n\nPrevious actions:\nStep 1: type"},
            {"from": "gpt", "value": "mobile.swipe(from_coord=[0.5, 0.8], to_coord=[0.5, 0.2])",
             "recipient": "os"}]},
        {"image": "phone.png", "conversations": [
            {"from": "human", "value": "<image>\nInstruction: hover"},
            {"from": "gpt", "value": "pyautogui.moveTo(x=0.5, y=0.5)", "recipient": "os"}]},
    ]  # fmt: skip
    src = tmp_path / "aguvis_stage.json"
    src.write_text(json.dumps(records))
    out = tmp_path / "aguvis.jsonl"
    printed = _convert(str(src), "--from", "aguvis", "--out", str(out), "--template", "qwen3vl")
    assert (
        "wrote 4 records" in printed and "dropped 1: pyautogui.moveTo is not in the action space" in printed
    )
    rows = _lines(out)
    # Stage 1: (0.25, 0.75) of 200×100 = pixel (50, 75) → Qwen3-VL 0–1000 (250, 750).
    assert _answer(rows[0]) == '{"point_2d": [250, 750]}' and _answer(rows[1]) == '{"point_2d": [100, 200]}'
    assert (250 / 1000 * 200, 750 / 1000 * 100) == (50, 75)
    assert _tool_args(rows[2]) == {"action": "type", "text": "milk"}
    assert _answer(rows[2]).startswith("<thinking>\nThought: type the query\n</thinking>\n<tool_call>")
    assert _tool_args(rows[3]) == {"action": "swipe", "coordinate": [500, 800], "direction": "up"}
    assert "Previous actions:\nStep 1: open app" in rows[2]["messages"][1]["content"][-1]["text"]
    _round_trip(out, "qwen3vl")


# -- OS-Atlas and ShowUI -------------------------------------------------------------------------------


def test_os_atlas_element_lists(tmp_path):
    _save(tmp_path / "web_1.png", (300, 200))
    src = tmp_path / "web_domain.json"
    src.write_text(json.dumps([{
        "img_filename": "web_1.png",
        "elements": [
            {"instruction": "the login button", "bbox": [0.1, 0.2, 0.3, 0.4], "data_type": "text"},
            {"instruction": "the search icon", "bbox": [30, 40, 90, 80], "data_type": "icon"},
            {"instruction": "", "bbox": [0.1, 0.1, 0.2, 0.2]},
        ],
    }]))  # fmt: skip
    out = tmp_path / "atlas.jsonl"
    printed = _convert(str(src), "--from", "os-atlas", "--out", str(out), "--template", "click",
                       "--coordinates", "pixels")  # fmt: skip
    assert "wrote 2 records" in printed and "dropped 1: no instruction ×1" in printed
    rows = _lines(out)
    # Both boxes' centers are pixel (60, 60): (0.2 × 300, 0.3 × 200) and ((30 + 90) / 2, (40 + 80) / 2).
    assert [_answer(r) for r in rows] == ["click(60, 60)", "click(60, 60)"]
    assert rows[0]["bbox"] == [30, 40, 90, 80] and rows[1]["bbox"] == [30, 40, 90, 80]
    assert rows[1]["categories"] == {"data_type": "icon"}
    _round_trip(out, "click", "pixels")


def test_showui_amex_metadata(tmp_path):
    _save(tmp_path / "images" / "amex_1.png", (200, 400))
    src = tmp_path / "metadata" / "hf_train_amex.json"
    src.parent.mkdir()
    src.write_text(json.dumps([{
        "img_url": "amex_1.png",
        "img_size": [200, 400],
        "element": [{"instruction": "Open settings", "bbox": [0.5, 0.5, 0.7, 0.6], "point": [0.6, 0.55]}],
        "element_size": 1,
    }]))  # fmt: skip
    out = tmp_path / "showui.jsonl"
    _convert(str(src), "--from", "showui", "--out", str(out), "--template", "mai-ui")
    [row] = _lines(out)
    assert row["messages"][0]["role"] == "system"
    # (0.6, 0.55) → MAI-UI 0–999 (599.4 → 599, 549.45 → 549) → pixel (119.8, 219.6) ≈ (120, 220).
    assert _answer(row) == '<answer>{"coordinate": [599, 549]}</answer>'
    assert (round(599 / 999 * 200), round(549 / 999 * 400)) == (120, 220)
    _round_trip(out, "mai-ui")


def test_an_unknown_layout_is_refused_in_one_line(tmp_path):
    src = tmp_path / "atlas.json"
    src.write_text(json.dumps([{"img_filename": "a.png", "elements": []}]))
    proc = subprocess.run(
        [sys.executable, "-m", "raylora", "data", "convert", str(src), "--from", "showui", "--out",
         str(tmp_path / "o.jsonl")],
        capture_output=True, text=True, cwd=ROOT, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert (
        proc.stderr.strip()
        == f"error: {src}[0]: not ShowUI metadata: expected the fields 'img_url' and 'element'"
    )


@pytest.mark.parametrize(
    "name, record, expected",
    [
        (
            "os-atlas",
            [{"img_url": "a.png", "element": []}],
            "expected the fields 'img_filename' and 'elements'",
        ),
        (
            "aguvis",
            [{"img_filename": "a.png", "elements": []}],
            "expected the fields 'image' and 'conversations'",
        ),
        ("gui-odyssey", {"episode_id": "e", "steps": []}, "expected the field 'device_info'"),
        ("showui", {"img_url": "a.png"}, "expected a JSON array of records"),
    ],
)
def test_each_converter_names_the_field_it_expected(tmp_path, name, record, expected):
    src = tmp_path / "src.json"
    src.write_text(json.dumps(record))
    with pytest.raises(DataError, match=expected):
        convert.convert(src, name, tmp_path / "out.jsonl")
    assert not (tmp_path / "out.jsonl").exists()


# -- training on a converted file ----------------------------------------------------------------------


@pytest.mark.slow
def test_two_training_steps_on_a_converted_file(tmp_path, raylora_cli):
    src = _tfrecord(tmp_path / "android_control-00000-of-00001", [_episode(7, size=(64, 128))])
    out = tmp_path / "ac.jsonl"
    _convert(
        str(src), "--from", "androidcontrol", "--out", str(out), "--template", "mai-ui", "--history", "1"
    )
    code, stdout, err = raylora_cli(
        "train", str(ROOT / "search_spaces" / "quickstart.yaml"),
        "--set", f"data.train={out}", "--set", f"data.eval={out}", "--set", "data.template=mai-ui",
        "--set", "data.max_length=2048", "--set", "training.max_steps=2", "--set", "training.eval_every=2",
        "--set", "training.click_eval_samples=2", "--output", str(tmp_path / "run"),
    )  # fmt: skip
    assert code == 0, err[-2000:]
    assert (tmp_path / "run" / "adapter" / "adapter_config.json").is_file()
    assert "step 2" in stdout
