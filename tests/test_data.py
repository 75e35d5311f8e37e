"""Records → chat template → labels: only assistant tokens are supervised; images never truncated."""

from __future__ import annotations

import json

import pytest

from raylora.data import samples
from raylora.errors import DataError
from raylora.train import encode, loader
from raylora.train.evaluate import is_hit, parse_click


def _encoded(records, processor, kw) -> list[dict]:
    return [encode.encode_one(record, processor, kw) for record in records]


def test_labels_cover_exactly_the_assistant_answer(processor, train_file):
    records = samples.read(train_file, limit=3)
    kw = encode.image_kwargs(None, None, processor)
    image_id = processor.tokenizer.convert_tokens_to_ids("<|image_pad|>")
    for record, item in zip(records, _encoded(records, processor, kw), strict=True):
        ids, labels = item["input_ids"], item["labels"]
        supervised = labels[labels != encode.IGNORE_INDEX].tolist()
        assert processor.tokenizer.decode(supervised) == record.answer() + "<|im_end|>"
        assert (labels[ids == image_id] == encode.IGNORE_INDEX).all()
        n_image = int((ids == image_id).sum())
        assert n_image == int(item["image_grid_thw"].prod()) // 4  # one token per 2×2 merged patches


def test_long_samples_are_dropped_and_counted(processor, train_file):
    records = samples.read(train_file, limit=4)
    kw = encode.image_kwargs(None, None, processor)
    lengths = [item["input_ids"].numel() for item in _encoded(records, processor, kw)]
    cut = sorted(lengths)[1]
    split = loader.open_split(str(train_file), processor, cut, kw, limit=4)
    assert split.dropped_too_long == sum(n > cut for n in lengths) > 0
    assert len(split.records) == sum(n <= cut for n in lengths)
    assert all(item["input_ids"].numel() <= cut for item in split.items)


def test_max_pixels_bounds_image_tokens(processor, train_file):
    records = samples.read(train_file, limit=4)
    for item in _encoded(records, processor, encode.image_kwargs(1024, 32 * 32 * 4, processor)):
        assert int(item["image_grid_thw"].prod()) // 4 <= 4


def test_collate_pads_and_keeps_image_inputs(processor, train_file):
    records = samples.read(train_file, limit=3)
    items = _encoded(records, processor, encode.image_kwargs(None, None, processor))
    batch = encode.collate(items, processor.tokenizer.pad_token_id)
    n = max(item["input_ids"].numel() for item in items)
    assert batch["input_ids"].shape == batch["labels"].shape == batch["mm_token_type_ids"].shape == (3, n)
    assert batch["attention_mask"].sum() == sum(item["input_ids"].numel() for item in items)
    assert batch["image_grid_thw"].shape == (3, 3)


def test_parquet_with_image_bytes_matches_jsonl(processor, train_file, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [json.loads(line) for line in train_file.read_text().splitlines()[:3]]
    for row in rows:
        for turn in row["messages"]:
            for item in turn["content"]:
                item.setdefault("text", None)
                item["image"] = (train_file.parent / item["image"]).read_bytes() if "image" in item else None
    path = tmp_path / "train.parquet"
    pq.write_table(pa.Table.from_pylist(rows), path)

    kw = encode.image_kwargs(None, None, processor)
    from_parquet = _encoded(samples.read(path), processor, kw)
    from_jsonl = _encoded(samples.read(train_file, limit=3), processor, kw)
    for a, b in zip(from_parquet, from_jsonl, strict=True):
        assert a["input_ids"].equal(b["input_ids"]) and a["pixel_values"].equal(b["pixel_values"])


def test_parquet_messages_as_json_strings(tmp_path, train_file):
    import pyarrow as pa
    import pyarrow.parquet as pq

    line = json.loads(train_file.read_text().splitlines()[0])
    for item in line["messages"][0]["content"]:
        if item["type"] == "image":
            item["image"] = str(train_file.parent / item["image"])
    pq.write_table(
        pa.table({"messages": [json.dumps(line["messages"])], "bbox": [line["bbox"]]}), tmp_path / "d.parquet"
    )
    (record,) = samples.read(tmp_path / "d.parquet")
    assert record.bbox == tuple(float(v) for v in line["bbox"])


@pytest.mark.parametrize(
    "row, message",
    [
        ("[1, 2]", 'a record needs "messages"'),
        ('{"messages": [{"role": "robot", "content": "x"}]}', "role of system, user or assistant"),
        ('{"messages": [{"role": "user", "content": [{"type": "audio"}]}]}', "must be a text or image item"),
        (
            '{"messages": [{"role": "assistant", "content": "click(1, 2)"}], "bbox": [5, 5, 1, 1]}',
            "bbox must be",
        ),
        (
            '{"messages": [{"role": "user", "content": "x"}, {"role": "assistant", "content": ""}]}',
            "no assistant turn",
        ),
    ],
)
def test_bad_records_name_file_and_line(tmp_path, row, message):
    path = tmp_path / "d.jsonl"
    path.write_text(
        '{"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]}\n\n'
        + row
        + "\n"
    )
    with pytest.raises(DataError) as info:
        samples.read(path)
    assert str(info.value).startswith(f"{path}:3")
    assert message in str(info.value)


def test_click_parsing_and_hits():
    assert parse_click("click(412, 230)") == (412.0, 230.0)
    assert parse_click("I would click( 1.5 ,2 ) there") == (1.5, 2.0)
    assert parse_click("tap(1, 2)") is None
    assert is_hit((10, 10), (10, 0, 20, 10)) and not is_hit((21, 5), (10, 0, 20, 10))
    assert not is_hit(None, (0, 0, 1000, 1000))


def test_builtin_answers_hit_their_boxes(train_file):
    for record in samples.read(train_file):
        assert is_hit(parse_click(record.answer()), record.bbox)
