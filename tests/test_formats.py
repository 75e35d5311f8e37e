"""The dataset formats and coordinate conventions GUI-agent teams bring, read as they are."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import pytest
from PIL import Image

from raylora.data import coordinates, formats, templates
from raylora.errors import DataError


def _png(path: Path, size=(200, 100)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, "white").save(path)
    return path


def _rows(ref, fmt="auto", coords="qwen3vl", template="click"):
    """The rows of a dataset, raising its first bad record as samples.read does."""
    out = []
    for where, row, _ in formats.rows(str(ref), fmt, coords, template):
        if isinstance(row, DataError):
            raise row
        out.append((where, row))
    return out


# -- coordinates -------------------------------------------------------------------------------------


@pytest.mark.parametrize("src, dst", list(itertools.permutations(coordinates.NAMES, 2)))
def test_points_and_boxes_round_trip_within_a_pixel(src, dst):
    size, resized = (1280, 720), coordinates.resized_size((1280, 720), 3136, 1003520)
    for px in [(0, 0), (1, 719), (640.4, 360.6), (1279, 0), (1280, 720)]:
        there = coordinates.convert_point(px, "pixels", src, size, resized)
        back = coordinates.convert_point(
            coordinates.convert_point(there, src, dst, size, resized), dst, "pixels", size, resized
        )
        assert abs(back[0] - px[0]) <= 2 and abs(back[1] - px[1]) <= 2, (px, there, back)


def test_known_values_of_each_family():
    size = (1000, 500)
    assert coordinates.convert_point((500, 250), "pixels", "qwen3vl", size) == (500, 500)
    assert coordinates.convert_point((500, 250), "pixels", "mai-ui", size) == (500, 500)  # 0.5 × 999
    assert coordinates.convert_point((999, 999), "mai-ui", "unit", size) == (1.0, 1.0)
    assert coordinates.convert_point((0.25, 0.5), "unit", "pixels", size) == (250, 250)
    assert coordinates.xywh_to_xyxy([10, 20, 30, 40]) == [10, 20, 40, 60]
    assert coordinates.resized_size((1280, 720), 3136, 1003520) == (1280, 704)  # multiples of 32


def test_the_pixels_versus_relative_mix_up_is_named():
    assert "outside qwen3vl's 0–1000" in coordinates.out_of_range([1200, 300], "qwen3vl", (1920, 1080))
    assert "outside pixels's 0–800 for a 800×600 image" in coordinates.out_of_range(
        [900, 10], "pixels", (800, 600)
    )
    assert coordinates.out_of_range([512, 300, 600, 400], "qwen3vl", (1920, 1080)) is None


# -- templates ---------------------------------------------------------------------------------------


def test_templates_write_each_familys_answer():
    box = [100, 50, 300, 150]  # pixels of a 1000×500 image; center (200, 100)
    click = templates.grounding_row("a.png", "open settings", box, (1000, 500), "click", "qwen3vl")
    assert click["messages"][-1]["content"][0]["text"] == "click(200, 200)"
    assert click["bbox"] == [100, 100, 300, 300]
    qwen = templates.grounding_row("a.png", "open settings", box, (1000, 500), "qwen3vl", "pixels")
    assert json.loads(qwen["messages"][-1]["content"][0]["text"]) == {"point_2d": [200, 200]}
    mai = templates.grounding_row("a.png", "open settings", box, (1000, 500), "mai-ui", "qwen3vl")
    assert mai["messages"][0]["role"] == "system"
    assert mai["messages"][-1]["content"][0]["text"] == '<answer>{"coordinate": [200, 200]}</answer>'


# -- formats -----------------------------------------------------------------------------------------


def test_llama_factory_sharegpt_json_array_with_placeholders(tmp_path):
    _png(tmp_path / "a.png")
    records = [
        {
            "messages": [
                {"role": "user", "content": "<image>click the OK button"},
                {"role": "assistant", "content": "click(500, 500)"},
            ],
            "images": ["a.png"],
        }
    ]
    (tmp_path / "train.json").write_text(json.dumps(records))
    ((where, row),) = _rows(tmp_path / "train.json")
    assert where.endswith("train.json[0]")
    assert row["messages"][0]["content"] == [
        {"type": "image", "image": "a.png"},
        {"type": "text", "text": "click the OK button"},
    ]


def test_sharegpt_conversations_without_placeholders_put_images_first(tmp_path):
    record = {
        "conversations": [{"from": "human", "value": "click OK"}, {"from": "gpt", "value": "click(1, 2)"}],
        "images": ["a.png", "b.png"],
    }
    (tmp_path / "d.jsonl").write_text(json.dumps(record) + "\n")
    ((_, row),) = _rows(tmp_path / "d.jsonl")
    assert [item["type"] for item in row["messages"][0]["content"]] == ["image", "image", "text"]


def test_placeholder_and_image_counts_must_match(tmp_path):
    record = {
        "messages": [{"role": "user", "content": "<image><image>x"}, {"role": "assistant", "content": "y"}]
    }
    (tmp_path / "d.jsonl").write_text(json.dumps({**record, "images": ["a.png"]}) + "\n")
    with pytest.raises(DataError, match=r"d\.jsonl:1: 2 <image> placeholder\(s\) but 1 image\(s\)"):
        _rows(tmp_path / "d.jsonl")


def test_dataset_info_entry_with_its_columns_and_tags(tmp_path):
    record = {
        "dialog": [{"speaker": "usr", "text": "<image>tap OK"}, {"speaker": "bot", "text": "click(3, 4)"}],
        "pics": ["a.png"],
    }
    (tmp_path / "mine.json").write_text(json.dumps([record]))
    info = {
        "gui": {
            "file_name": "mine.json",
            "formatting": "sharegpt",
            "columns": {"messages": "dialog", "images": "pics"},
            "tags": {"role_tag": "speaker", "content_tag": "text", "user_tag": "usr", "assistant_tag": "bot"},
        }
    }
    (tmp_path / "dataset_info.json").write_text(json.dumps(info))
    ((_, row),) = _rows(f"{tmp_path / 'dataset_info.json'}#gui")
    assert [m["role"] for m in row["messages"]] == ["user", "assistant"]
    assert row["messages"][0]["content"][0] == {"type": "image", "image": "a.png"}
    with pytest.raises(DataError, match="no such entry"):
        _rows(f"{tmp_path / 'dataset_info.json'}#other")


def test_qwen_finetuning_format(tmp_path):
    record = {
        "image": "a.png",
        "conversations": [
            {"from": "human", "value": "<image>\nWhere is OK?"},
            {"from": "gpt", "value": "here"},
        ],
    }
    (tmp_path / "q.json").write_text(json.dumps([record]))
    ((_, row),) = _rows(tmp_path / "q.json")
    assert row["messages"][0]["content"] == [
        {"type": "image", "image": "a.png"},
        {"type": "text", "text": "Where is OK?"},
    ]


def test_screenspot_v2_xywh_pixels_become_the_templates_answer(tmp_path):
    _png(tmp_path / "shot.png", (1000, 500))
    record = {
        "img_filename": "shot.png",
        "bbox": [100, 50, 200, 100],
        "instruction": "open settings",
        "data_type": "icon",
        "data_source": "ios",
    }
    (tmp_path / "ss.json").write_text(json.dumps([record]))
    ((_, row),) = _rows(tmp_path / "ss.json", template="mai-ui")
    assert row["messages"][-1]["content"][0]["text"] == '<answer>{"coordinate": [200, 200]}</answer>'
    assert row["bbox"] == pytest.approx([99.9, 99.9, 299.7, 299.7])  # the answer's 0–999, unrounded
    assert row["box_pixels"] == [100, 50, 300, 150]  # what scoring compares in
    assert row["categories"] == {"data_type": "icon", "data_source": "ios"}


def test_screenspot_pro_xyxy_pixels_and_its_categories(tmp_path):
    _png(tmp_path / "images" / "p.png", (2000, 1000))
    record = {
        "img_filename": "p.png",
        "bbox": [100, 100, 300, 200],
        "img_size": [2000, 1000],
        "instruction": "bold",
        "ui_type": "text",
        "platform": "windows",
        "application": "word",
        "group": "Office",
        "id": "word_1",
    }
    (tmp_path / "pro.json").write_text(json.dumps([record]))
    ((_, row),) = _rows(tmp_path / "pro.json")
    assert row["messages"][-1]["content"][0]["text"] == "click(100, 150)"
    assert row["categories"]["application"] == "word" and row["id"] == "word_1"


def test_a_box_outside_its_image_names_the_record(tmp_path):
    _png(tmp_path / "shot.png", (100, 100))
    record = {"img_filename": "shot.png", "bbox": [50, 50, 80, 80], "instruction": "x"}
    (tmp_path / "ss.jsonl").write_text(json.dumps(record) + "\n")
    with pytest.raises(
        DataError, match=r"ss\.jsonl:1: bbox \[50, 50, 80, 80\] does not fit the 100×100 image"
    ):
        _rows(tmp_path / "ss.jsonl")


def test_an_undetectable_record_and_bad_bytes_name_the_line(tmp_path):
    (tmp_path / "x.jsonl").write_text('{"prompt": "hi", "response": "yo"}\n')
    with pytest.raises(DataError, match=r"x\.jsonl:1: cannot tell the data format .*prompt, response"):
        _rows(tmp_path / "x.jsonl")
    (tmp_path / "y.jsonl").write_bytes(b'{"messages": []}\n{"messages": "\xff"}\n')
    with pytest.raises(DataError, match=r"y\.jsonl:2: not UTF-8"):
        _rows(tmp_path / "y.jsonl")


def test_validate_reports_every_bad_record_not_only_the_first(tmp_path):
    from raylora.data import samples

    good = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}
    lines = [
        json.dumps(good),
        "{not json",
        json.dumps({"messages": [{"role": "user", "content": "x"}]}),
        json.dumps(good),
    ]
    (tmp_path / "d.jsonl").write_text("\n".join(lines) + "\n")
    found = [str(e) for e in samples.problems(tmp_path / "d.jsonl")]
    assert len(found) == 2 and found[0].startswith(f"{tmp_path / 'd.jsonl'}:2: malformed JSON"), found
    assert found[1].startswith(f"{tmp_path / 'd.jsonl'}:3: no assistant turn"), found


def test_a_screenspot_file_trains_through_the_same_reader(tmp_path):
    from raylora.data import samples

    _png(tmp_path / "shot.png", (640, 360))
    record = {
        "img_filename": "shot.png",
        "bbox": [64, 36, 64, 36],
        "instruction": "open the menu",
        "data_type": "icon",
    }
    (tmp_path / "ss.json").write_text(json.dumps([record]))
    (read,) = samples.read(tmp_path / "ss.json", template="qwen3vl")
    assert read.images == [str(tmp_path / "shot.png")] and read.categories == {"data_type": "icon"}
    assert json.loads(read.answer()) == {"point_2d": [150, 150]} and read.bbox == (100.0, 100.0, 200.0, 200.0)


def test_a_llama_factory_record_trains_with_its_image_and_inspect_says_so(tmp_path, raylora_cli):
    _png(tmp_path / "a.png", (128, 128))
    record = {
        "messages": [
            {"role": "user", "content": "<image>click the OK button"},
            {"role": "assistant", "content": "click(500, 500)"},
        ],
        "images": ["a.png"],
    }
    (tmp_path / "train.jsonl").write_text(json.dumps(record) + "\n")
    code, out, err = raylora_cli("data", "inspect", str(tmp_path / "train.jsonl"), "--json")
    assert code == 0, err
    report = json.loads(out)
    assert report["format"] == "sharegpt" and report["records"] == 1 and report["images"] == 1
    assert report["image_tokens_total"] == 16  # 128×128 at one token per 32×32 pixels
    assert report["supervised_tokens_total"] > 0 and report["dropped_too_long"] == 0
    assert report["coordinates"] == {
        "convention": "qwen3vl",
        "x": [500.0, 500.0],
        "y": [500.0, 500.0],
        "within_range": True,
    }
    assert "⟦click(500, 500)" in report["example"]["rendered"]


def test_an_answer_outside_the_declared_convention_names_the_record(tmp_path):
    from raylora.data import samples

    record = {
        "messages": [
            {"role": "user", "content": "click OK"},
            {"role": "assistant", "content": "click(1430, 620)"},
        ]
    }
    (tmp_path / "px.jsonl").write_text(json.dumps(record) + "\n")
    with pytest.raises(
        DataError, match=r"px\.jsonl:1: x=1430\.0 is outside qwen3vl's 0–1000: is data\.coordinates"
    ):
        samples.read(tmp_path / "px.jsonl")
    assert samples.read(tmp_path / "px.jsonl", coordinates="pixels")[0].answer() == "click(1430, 620)"
    mai = {
        "messages": [{"role": "user", "content": "x"}, {"role": "assistant", "content": "click(999, 1000)"}]
    }
    (tmp_path / "mai.jsonl").write_text(json.dumps(mai) + "\n")
    with pytest.raises(DataError, match="y=1000.0 is outside mai-ui's 0–999"):
        samples.read(tmp_path / "mai.jsonl", coordinates="mai-ui")


# -- Hugging Face datasets ---------------------------------------------------------------------------


def _screenspot_rows(tmp_path: Path, n: int = 3) -> list[dict]:
    shot = _png(tmp_path / "shot.png", (400, 200))
    return [
        {
            "image_path": str(shot),
            "bbox": [10 * i, 10, 10 * i + 40, 50],
            "instruction": f"open item {i}",
            "data_type": "text" if i % 2 else "icon",
        }
        for i in range(n)
    ]


def test_hf_save_to_disk_folder_with_embedded_images_and_a_column_mapping(tmp_path):
    import datasets  # the dev extra installs it (users: the hf extra)

    shot = _png(tmp_path / "img.png", (300, 150))
    chat = {
        "messages": [
            {"role": "user", "content": "<image>click the OK button"},
            {"role": "assistant", "content": "click(500, 500)"},
        ],
    }
    table = {"conversation": [chat["messages"]] * 4, "shots": [[str(shot)]] * 4}
    dataset = datasets.Dataset.from_dict(table).cast_column("shots", datasets.Sequence(datasets.Image()))
    dataset.save_to_disk(tmp_path / "saved", max_shard_size="1KB")  # several Arrow shards
    assert len(list((tmp_path / "saved").glob("*.arrow"))) > 1
    rows = list(
        formats.rows(str(tmp_path / "saved"), "hf", columns={"messages": "conversation", "images": "shots"})
    )
    assert [where for where, _, _ in rows] == [f"{tmp_path / 'saved'}:row {i}" for i in range(1, 5)]
    row = rows[0][1]
    image = row["messages"][0]["content"][0]["image"]
    assert image["bytes"] == shot.read_bytes()  # the Image feature's struct: the screenshot itself
    assert row["messages"][0]["content"][1] == {"type": "text", "text": "click the OK button"}

    from raylora.data import samples

    records = samples.read(
        tmp_path / "saved", fmt="hf", columns={"messages": "conversation", "images": "shots"}
    )
    assert len(records) == 4 and records[0].images[0] == shot.read_bytes()

    dataset_dict = datasets.DatasetDict({"train": dataset, "test": dataset})
    dataset_dict.save_to_disk(tmp_path / "dict")
    with pytest.raises(DataError, match="a DatasetDict: name one split's folder \\(test, train\\)"):
        _rows(tmp_path / "dict", "hf")
    with pytest.raises(DataError, match=r"no column 'shots_missing'"):
        list(samples.read(tmp_path / "dict" / "test", fmt="hf", columns={"images": "shots_missing"}))


def test_hf_parquet_and_arrow_shards_of_screenspot_records(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    records = _screenspot_rows(tmp_path, 4)
    folder = tmp_path / "shards"
    folder.mkdir()
    pq.write_table(pa.Table.from_pylist(records[:2]), folder / "part-0.parquet")
    pq.write_table(pa.Table.from_pylist(records[2:]), folder / "part-1.parquet")
    columns = {"img_filename": "image_path"}
    rows = _rows_with(folder, "hf", columns)
    assert [row["categories"]["data_type"] for _, row in rows] == ["icon", "text", "icon", "text"]
    assert rows[3][0] == f"{folder}:row 4"
    assert rows[1][1]["bbox"] == [25, 50, 150, 300]  # [x, y, w, h] = [10, 10, 50, 50] px of 400×200

    table = pa.Table.from_pylist(records)
    with pa.ipc.new_stream(tmp_path / "one.arrow", table.schema) as writer:  # save_to_disk's layout
        writer.write_table(table)
    assert [row for _, row in _rows_with(tmp_path / "one.arrow", "hf", columns)] == [r for _, r in rows]


def _rows_with(ref, fmt, columns):
    out = []
    for where, row, _ in formats.rows(str(ref), fmt, columns=columns):
        if isinstance(row, DataError):
            raise row
        out.append((where, row))
    return out


def test_ms_swift_grounding_objects_become_the_templates_answer(tmp_path):
    _png(tmp_path / "shot.png", (400, 200))
    record = {
        "messages": [
            {"role": "user", "content": "<image>Find the <ref-object>"},
            {"role": "assistant", "content": "<bbox>"},
        ],
        "images": ["shot.png"],
        "objects": {"ref": ["OK button"], "bbox": [[100, 50, 140, 70]], "bbox_type": "real"},
    }
    (tmp_path / "swift.jsonl").write_text(json.dumps(record) + "\n")
    ((where, row),) = _rows(tmp_path / "swift.jsonl", template="qwen3vl")
    assert row["messages"][0]["content"] == [
        {"type": "image", "image": "shot.png"},
        {"type": "text", "text": "Find the OK button"},
    ]
    # center (120, 60) px of 400×200 → (300, 300) in 0–1000; the box too, for click accuracy
    assert row["messages"][1]["content"] == [{"type": "text", "text": '{"point_2d": [300, 300]}'}]
    assert row["bbox"] == [250, 250, 350, 350]

    record["objects"] = {"ref": ["OK button"], "bbox": [[250, 250, 350, 350]], "bbox_type": "norm1000"}
    (tmp_path / "swift.jsonl").write_text(json.dumps(record) + "\n")
    ((_, row),) = _rows(tmp_path / "swift.jsonl", coords="mai-ui", template="click")
    assert row["messages"][1]["content"][0]["text"] == "click(300, 300)"  # 0.3 of 999 → 299.7 → 300

    record["objects"] = {"ref": ["OK button"], "bbox": [[100, 50, 900, 70]]}  # declared pixels, too wide
    (tmp_path / "swift.jsonl").write_text(json.dumps(record) + "\n")
    with pytest.raises(DataError, match=r"swift.jsonl:1: objects.bbox .*x=900 is outside pixels"):
        _rows(tmp_path / "swift.jsonl", coords="pixels")


def test_pixel_answers_are_checked_against_their_image(tmp_path):
    from raylora.data import samples

    _png(tmp_path / "shot.png", (400, 200))
    record = {
        "messages": [
            {
                "role": "user",
                "content": [{"type": "image", "image": "shot.png"}, {"type": "text", "text": "OK"}],
            },
            {"role": "assistant", "content": [{"type": "text", "text": "click(380, 150)"}]},
        ],
    }
    path = tmp_path / "chat.jsonl"
    path.write_text(json.dumps(record) + "\n")
    assert samples.read(path, coordinates="pixels")[0].answer() == "click(380, 150)"
    record["messages"][1]["content"][0]["text"] = "click(380, 250)"  # below the 200-pixel-high image
    path.write_text(json.dumps(record) + "\n")
    with pytest.raises(DataError, match=r"chat.jsonl:1: y=250.* for a 400×200 image"):
        samples.read(path, coordinates="pixels")


def test_inspect_reads_a_shard_folder_through_a_column_mapping(tmp_path, raylora_cli):
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder = tmp_path / "shards"
    folder.mkdir()
    pq.write_table(pa.Table.from_pylist(_screenspot_rows(tmp_path, 4)), folder / "part-0.parquet")
    command = ["data", "inspect", str(folder), "--format", "hf", "--json"]
    code, out, err = raylora_cli(*command, "--column", "img_filename=image_path")
    assert code == 0, err
    report = json.loads(out)
    assert (report["format"], report["records"], report["images"]) == ("screenspot", 4, 4)
    # 400×200 is above the built-in processor's 65,536 pixels: → 352×160 → 22×10 patches → 55 tokens
    assert report["image_tokens_total"] == 4 * 55
    assert report["categories"] == {"data_type": {"icon": 2, "text": 2}}
    code, _, err = raylora_cli(*command)
    assert code == 2 and err.count("\n") == 1 and "or map its columns with data.columns" in err, err
