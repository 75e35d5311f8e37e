"""The lazy data loader: token lengths known without decoding, batches encoded in DataLoader workers,
resume without replaying the past, and bad screenshots named by record (in ``validate`` and in training)."""

from __future__ import annotations

import io
import itertools
import json
import struct
import zlib
from pathlib import Path

import pytest

from raylora.data import samples
from raylora.errors import DataError
from raylora.train import encode, loader


@pytest.mark.parametrize("bounds", [(None, None), (1024, 32 * 32 * 4)])
def test_length_index_matches_the_encoded_length(processor, train_file, bounds, tmp_path):
    kw = encode.image_kwargs(*bounds, processor)
    split = loader.open_split(str(train_file), processor, 4096, kw, limit=12, cache_dir=tmp_path)
    assert split.lengths == [item["input_ids"].numel() for item in split.items]
    assert len(list(tmp_path.glob("*.json"))) == 1  # the index is on disk, and read back next time
    again = loader.open_split(str(train_file), processor, 4096, kw, limit=12, cache_dir=tmp_path)
    assert again.lengths == split.lengths


def test_too_long_samples_are_dropped_before_any_decoding(processor, train_file):
    kw = encode.image_kwargs(None, None, processor)
    full = loader.open_split(str(train_file), processor, 4096, kw, limit=12)
    cut = sorted(full.lengths)[5]
    split = loader.open_split(str(train_file), processor, cut, kw, limit=12)
    assert split.dropped_too_long == sum(n > cut for n in full.lengths) > 0
    assert all(n <= cut for n in split.lengths)


def test_batches_resume_where_they_stopped_and_shard_by_rank(processor, train_file):
    kw = encode.image_kwargs(1024, 32 * 32 * 4, processor)
    split = loader.open_split(str(train_file), processor, 4096, kw, limit=12)
    pad = processor.tokenizer.pad_token_id
    whole = loader.batches(split, 2, pad, seed=3, workers=2)
    first = [next(whole)["input_ids"].tolist() for _ in range(9)]  # past one epoch of 6 batches
    resumed = loader.batches(split, 2, pad, seed=3, skip=4)
    assert [next(resumed)["input_ids"].tolist() for _ in range(5)] == first[4:]

    shards = [loader._Batches(len(split.items), 2, 3, rank, 2, 0) for rank in (0, 1)]
    seen = [{i for batch in itertools.islice(s, 3) for i in batch} for s in shards]
    assert not seen[0] & seen[1] and seen[0] | seen[1] == set(range(12))


def _png(width: int, height: int) -> bytes:
    """A PNG whose header says ``width``×``height`` (its pixel data is one empty row: enough for a header
    read, and what a 196-megapixel screenshot looks like to the size check)."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b"\0"))
        + chunk(b"IEND", b"")
    )


def _bad_images(folder: Path, train_file: Path) -> Path:
    """A JSONL file of good records plus a truncated PNG, a text file named .png, a huge image, an empty
    image, and a line that is not UTF-8."""
    from PIL import Image

    good = [json.loads(line) for line in train_file.read_text().splitlines()[:2]]
    for record in good:
        item = record["messages"][0]["content"][0]
        item["image"] = str(train_file.parent / item["image"])
    buffer = io.BytesIO()
    Image.new("RGB", (64, 48), (10, 200, 30)).save(buffer, format="PNG")
    (folder / "truncated.png").write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    (folder / "text.png").write_text("not an image\n")
    (folder / "huge.png").write_bytes(_png(14_000, 14_000))
    (folder / "empty.png").write_bytes(b"")
    lines = [json.dumps(good[0])]
    for name in ("truncated.png", "text.png", "huge.png", "empty.png"):
        record = json.loads(json.dumps(good[1]))
        record["messages"][0]["content"][0]["image"] = name
        lines.append(json.dumps(record))
    path = folder / "data.jsonl"
    path.write_bytes(("\n".join(lines) + "\n").encode() + b'{"messages": "caf\xe9"}\n')
    return path


def test_validate_opens_every_image_and_names_each_bad_record(tmp_path, train_file):
    path = _bad_images(tmp_path, train_file)
    found = {e.where: e.message for e in samples.problems(path)}
    assert set(found) == {f"{path}:{line}" for line in (2, 3, 4, 5, 6)}
    assert "cannot decode image" in found[f"{path}:2"]  # header fine, pixels cut short
    assert "cannot read image" in found[f"{path}:3"]
    assert "larger than 50,000,000 pixels" in found[f"{path}:4"]
    assert "cannot read image" in found[f"{path}:5"]
    assert "not UTF-8" in found[f"{path}:6"]


def test_a_bad_image_met_in_training_names_its_record(tmp_path, train_file, processor):
    path = _bad_images(tmp_path, train_file)
    lines = path.read_bytes().splitlines()[:2]  # the good record and the truncated PNG
    path.write_bytes(b"\n".join(lines) + b"\n")
    kw = encode.image_kwargs(1024, 32 * 32 * 4, processor)
    split = loader.open_split(str(path), processor, 4096, kw)  # the header is fine: it reads as an image
    with pytest.raises(DataError, match=f"{path}:2: cannot decode image"):
        batches = loader.batches(split, 1, processor.tokenizer.pad_token_id, seed=0, workers=1)
        for _ in range(4):
            next(batches)


def test_embedded_image_bytes_are_spilled_to_files(tmp_path, train_file):
    import pyarrow as pa
    import pyarrow.parquet as pq

    record = json.loads(train_file.read_text().splitlines()[0])
    shot = record["messages"][0]["content"][0]
    shot["image"] = (train_file.parent / shot["image"]).read_bytes()
    pq.write_table(pa.Table.from_pylist([record] * 3), tmp_path / "data.parquet")
    records = samples.read(tmp_path / "data.parquet", spill_dir=tmp_path / "spill")
    paths = {r.images[0] for r in records}
    assert len(paths) == 1 and Path(next(iter(paths))).read_bytes() == shot["image"]


def test_loader_workers_default_to_the_workers_other_cpus():
    from raylora import spec as spec_lib

    def workers(**values):
        return loader.workers(spec_lib.Spec().with_values(values))

    assert workers() == 0  # one CPU per worker (and a laptop study's 0.5): decode in the training process
    assert workers(**{"resources.cpus_per_worker": 8}) == 7
    assert workers(**{"resources.cpus_per_worker": 8, "data.loader_workers": 2}) == 2
