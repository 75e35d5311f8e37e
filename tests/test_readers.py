"""Record layouts of LLaMA-Factory, ms-swift, OpenAI, transformers and GUI-Actor, written here from each
project's published layout and read as raylora reads a dataset."""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path

import pytest
from PIL import Image

from raylora.data import formats, samples
from raylora.errors import DataError

TOOLS = [
    {
        "name": "get_weather",
        "description": "The weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
    }
]


def _png(path: Path, size=(200, 100), color="white") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, color).save(path)
    return path


def _png_bytes(size=(64, 32)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, "red").save(buffer, format="PNG")
    return buffer.getvalue()


def _write(path: Path, records: list, jsonl: bool = False) -> Path:
    text = "\n".join(json.dumps(r) for r in records) if jsonl else json.dumps(records)
    path.write_text(text)
    return path


def _texts(message: dict) -> str:
    return "".join(item["text"] for item in message["content"] if item["type"] == "text")


def _roles(sample) -> list[str]:
    return [m["role"] for m in sample.messages]


# -- alpaca ------------------------------------------------------------------------------------------


def test_alpaca_multimodal_with_system_and_history(tmp_path):
    _png(tmp_path / "shots" / "a.png")
    data = _write(
        tmp_path / "gui.json",
        [
            {
                "instruction": "<image>Click the OK button",
                "input": "on the dialog",
                "output": "click(412, 230)",
                "system": "You are a GUI agent.",
                "history": [["What is on screen?", "A dialog."]],
                "images": ["shots/a.png"],
            }
        ],
    )
    [sample] = samples.read(data)
    assert _roles(sample) == ["system", "user", "assistant", "user", "assistant"]
    assert _texts(sample.messages[0]) == "You are a GUI agent."
    # LLaMA-Factory joins instruction and input with a newline.
    assert _texts(sample.messages[3]) == "Click the OK button\non the dialog"
    assert sample.messages[3]["content"][0] == {"type": "image"}
    assert sample.images == [str(tmp_path / "shots" / "a.png")] and sample.answer() == "click(412, 230)"


def test_alpaca_through_dataset_info_columns(tmp_path):
    _png(tmp_path / "a.png")
    _write(tmp_path / "gui.json", [{"question": "Click OK", "answer": "click(10, 20)", "pics": ["a.png"]}])
    info = {
        "gui": {
            "file_name": "gui.json",
            "formatting": "alpaca",
            "columns": {"prompt": "question", "response": "answer", "images": "pics"},
        }
    }
    (tmp_path / "dataset_info.json").write_text(json.dumps(info))
    [sample] = samples.read(f"{tmp_path / 'dataset_info.json'}#gui")
    assert _roles(sample) == ["user", "assistant"] and len(sample.images) == 1
    assert sample.instruction() == "Click OK" and sample.answer() == "click(10, 20)"


# -- tool turns --------------------------------------------------------------------------------------


def test_sharegpt_function_call_and_observation_become_the_templates_tool_turns(tmp_path):
    call = {"name": "get_weather", "arguments": {"city": "Paris"}}
    data = _write(
        tmp_path / "tools.json",
        [
            {
                "conversations": [
                    {"from": "human", "value": "Weather in Paris?"},
                    {"from": "function_call", "value": json.dumps(call)},
                    {"from": "observation", "value": '{"temp": 21}'},
                    {"from": "gpt", "value": "It is 21 degrees."},
                ],
                "system": "Be brief.",
                "tools": json.dumps(TOOLS),
            }
        ],
    )
    [sample] = samples.read(data)
    assert _roles(sample) == ["system", "user", "assistant", "user", "assistant"]
    system = _texts(sample.messages[0])
    assert system.startswith("Be brief.\n\n# Tools")
    assert json.dumps({"type": "function", "function": TOOLS[0]}) in system
    assert "<tools>" in system and "</tools>" in system
    assert (
        _texts(sample.messages[2])
        == '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'
    )
    assert _texts(sample.messages[3]) == '<tool_response>\n{"temp": 21}\n</tool_response>'
    assert sample.answer() == "It is 21 degrees."


def test_ms_swift_tool_call_and_tool_response_roles(tmp_path):
    data = _write(
        tmp_path / "swift.jsonl",
        [
            {
                "tools": TOOLS,
                "messages": [
                    {"role": "user", "content": "Weather in Paris and Rome?"},
                    {
                        "role": "tool_call",
                        "content": '{"name": "get_weather", "arguments": {"city": "Paris"}}',
                    },
                    {
                        "role": "tool_call",
                        "content": '{"name": "get_weather", "arguments": {"city": "Rome"}}',
                    },
                    {"role": "tool_response", "content": "21"},
                    {"role": "tool_response", "content": "25"},
                    {"role": "assistant", "content": "Paris 21, Rome 25."},
                ],
            }
        ],
        jsonl=True,
    )
    [sample] = samples.read(data)
    assert _roles(sample) == ["system", "user", "assistant", "assistant", "user", "assistant"]
    # Consecutive tool responses share one user turn, as Qwen's chat template renders them.
    assert (
        _texts(sample.messages[4])
        == "<tool_response>\n21\n</tool_response>\n<tool_response>\n25\n</tool_response>"
    )
    assert '"city": "Rome"' in _texts(sample.messages[3])


def test_openai_tool_calls_and_tool_messages(tmp_path):
    data = _write(
        tmp_path / "openai.jsonl",
        [
            {
                "messages": [
                    {"role": "user", "content": [{"type": "text", "text": "Weather?"}]},
                    {
                        "role": "assistant",
                        "content": None,
                        "tool_calls": [
                            {
                                "type": "function",
                                "function": {"name": "get_weather", "arguments": '{"city": "Oslo"}'},
                            }
                        ],
                    },
                    {"role": "tool", "content": "-3"},
                    {"role": "assistant", "content": "Cold: -3."},
                ]
            }
        ],
        jsonl=True,
    )
    [sample] = samples.read(data)
    assert _roles(sample) == ["user", "assistant", "user", "assistant"]
    assert (
        _texts(sample.messages[1])
        == '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Oslo"}}\n</tool_call>'
    )


def test_a_top_level_system_is_kept(tmp_path):
    data = _write(
        tmp_path / "s.json",
        [
            {
                "system": "You operate a phone.",
                "conversations": [{"from": "human", "value": "Go home"}, {"from": "gpt", "value": "home()"}],
            }
        ],
    )
    [sample] = samples.read(data)
    assert _roles(sample) == ["system", "user", "assistant"]
    assert _texts(sample.messages[0]) == "You operate a phone."


# -- images ------------------------------------------------------------------------------------------


def test_image_items_in_every_spelling(tmp_path):
    shot = _png(tmp_path / "shot.png")
    encoded = base64.b64encode(_png_bytes()).decode()
    items = [
        {"type": "image_url", "image_url": {"url": "shot.png"}},  # OpenAI, a path
        {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{encoded}"}},  # OpenAI, data URI
        {"type": "image", "path": "shot.png"},  # transformers
        {"type": "image", "url": shot.as_uri()},  # transformers, a URL
        {"type": "image", "image": {"bytes": encoded}},  # base64 bytes
        {"type": "image", "bytes": encoded},
        {"type": "text", "text": "click the OK button"},
    ]
    row = {
        "messages": [
            {"role": "user", "content": items},
            {"role": "assistant", "content": [{"type": "text", "text": "click(10, 20)"}]},
        ]
    }
    data = _write(tmp_path / "chat.jsonl", [row], jsonl=True)
    [sample] = samples.read(data)
    assert len(sample.images) == 6
    assert [samples.image_size(ref) for ref in sample.images] == [(200, 100), (64, 32)] + [(200, 100)] * 2 + [
        (64, 32)
    ] * 2
    assert samples.problems(data) == []


def test_sharegpt_images_as_base64_bytes(tmp_path):
    encoded = base64.b64encode(_png_bytes()).decode()
    row = {
        "messages": [
            {"role": "user", "content": "<image>click OK"},
            {"role": "assistant", "content": "click(1, 2)"},
        ],
        "images": [{"bytes": encoded}],
    }
    [sample] = samples.read(_write(tmp_path / "b.jsonl", [row], jsonl=True))
    assert samples.image_size(sample.images[0]) == (64, 32)


def test_assistant_only_records_keep_their_images(tmp_path):
    _png(tmp_path / "a.png")
    row = {
        "messages": [{"role": "assistant", "content": "A settings screen with a search box."}],
        "images": ["a.png"],
    }
    [sample] = samples.read(_write(tmp_path / "pt.jsonl", [row], jsonl=True))
    assert sample.images == [str(tmp_path / "a.png")]
    assert sample.messages[0]["content"][0] == {"type": "image"}


@pytest.mark.parametrize(
    "row",
    [
        {"messages": [{"role": "user", "content": "<video>what?"}, {"role": "assistant", "content": "x"}],
         "videos": ["clip.mp4"]},
        {"conversations": [{"from": "human", "value": "<video>what?"}, {"from": "gpt", "value": "x"}]},
        {"messages": [{"role": "user", "content": [{"type": "video", "video": "clip.mp4"}]},
                      {"role": "assistant", "content": [{"type": "text", "text": "x"}]}]},
    ],
)  # fmt: skip
def test_video_is_refused_naming_the_record(tmp_path, row):
    data = _write(tmp_path / "v.jsonl", [row], jsonl=True)
    with pytest.raises(DataError, match=r"v\.jsonl:1: video is not supported yet"):
        samples.read(data)


def test_video_refusal_is_one_line_from_the_cli(tmp_path, raylora_cli):
    row = {"conversations": [{"from": "human", "value": "<video>what?"}, {"from": "gpt", "value": "x"}]}
    data = _write(tmp_path / "v.jsonl", [row], jsonl=True)
    code, _, err = raylora_cli("data", "inspect", str(data))
    assert code == 2 and "Traceback" not in err
    assert err.strip().count("\n") == 0 and f"{data}:1: video is not supported yet" in err


# -- GUI-Actor ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "template, coords, answer, box",
    [
        ("qwen3vl", "qwen3vl", '{"point_2d": [200, 400]}', [100, 200, 300, 600]),
        ("click", "pixels", "click(40, 40)", [20, 20, 60, 60]),
        ("mai-ui", "qwen3vl", '<answer>{"coordinate": [200, 400]}</answer>', [99.9, 199.8, 299.7, 599.4]),
    ],
)
def test_gui_actor_bbox_gt_is_the_reference_and_the_answer_is_the_templates(
    tmp_path, template, coords, answer, box
):
    _png(tmp_path / "shot.png", (200, 100))
    row = {
        "image": "shot.png",
        "conversations": [
            {"from": "human", "value": "<image>\nClick the search button"},
            {"from": "gpt", "value": "<ACTION_PLACEHOLDER>", "recipient": "os", "end_turn": True,
             "bbox_gt": [0.1, 0.2, 0.3, 0.6]},
        ],
    }  # fmt: skip
    data = _write(tmp_path / "actor.json", [row])
    [(_, chat)] = [(w, r) for w, r, _ in formats.rows(str(data), "auto", coords, template)]
    [sample] = samples.read(data, coordinates=coords, template=template)
    assert "<ACTION_PLACEHOLDER>" not in json.dumps(chat)
    assert sample.answer() == answer and list(sample.bbox) == pytest.approx(box)  # the box is never rounded
    assert sample.box_pixels == pytest.approx((20, 20, 60, 60))  # 0.1–0.3 × 200, 0.2–0.6 × 100
    # The answer's point lands on the box center's pixel: (0.2 × 200, 0.4 × 100) = (40, 40).
    extent = {"qwen3vl": 1000, "mai-ui": 999}.get(template if template != "click" else coords)
    point = json.loads(answer.removeprefix("<answer>").removesuffix("</answer>")) if extent else None
    if point:
        x, y = point.get("point_2d") or point["coordinate"]
        assert (round(x / extent * 200), round(y / extent * 100)) == (40, 40)
    if template == "mai-ui":
        assert _roles(sample)[0] == "system"


def test_gui_actor_box_that_does_not_fit_is_named(tmp_path):
    _png(tmp_path / "shot.png", (200, 100))
    row = {
        "image": "shot.png",
        "conversations": [
            {"from": "human", "value": "<image>Click it"},
            {"from": "gpt", "value": "<ACTION_PLACEHOLDER>", "bbox_gt": [150, 20, 260, 40]},
        ],
    }
    with pytest.raises(DataError, match=r"actor\.json\[0\]: bbox_gt \[150, 20, 260, 40\] does not fit"):
        samples.read(_write(tmp_path / "actor.json", [row]))


def test_an_image_in_an_assistant_turn_is_never_supervised():
    import torch

    from raylora.train import encode

    # <|im_start|> assistant\n <|vision_start|> <|image_pad|> ×2 <|vision_end|> "A" "screen" <|im_end|>
    start, role, vision_start, pad, vision_end, end = 1, [2, 3], 10, 11, 12, 9
    ids = torch.tensor([start, *role, vision_start, pad, pad, vision_end, 20, 21, end])
    labels = encode._labels(ids, (start, role, {vision_start, pad, vision_end}), end)
    assert labels[labels != encode.IGNORE_INDEX].tolist() == [20, 21, end]
