"""Chat records (JSONL, or Parquet via pyarrow) → chat template → masked labels → batches.

A record, one per JSONL line (image paths are relative to the file; ``bbox`` is optional, in the same
0–1000 space as the answer)::

    {"messages": [{"role": "user", "content": [{"type": "image", "image": "shots/1.png"},
                                               {"type": "text", "text": "click the OK button"}]},
                  {"role": "assistant", "content": [{"type": "text", "text": "click(412, 230)"}]}],
     "bbox": [380, 200, 445, 260]}

Parquet files hold the same columns; ``messages`` may be nested columns or a JSON string, and an image may
be a path or the encoded image bytes. Only assistant tokens are supervised: the prompt and the image pad
tokens get label -100. A sample longer than ``max_length`` is dropped and counted, never truncated,
because cutting inside an image span breaks the image-feature/token correspondence.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import DataError

IGNORE_INDEX = -100


@dataclass(frozen=True)
class Record:
    """One validated conversation; ``images`` are paths or bytes in the order they appear."""

    messages: list[dict]
    images: list[Any]
    bbox: tuple[float, float, float, float] | None
    where: str

    def prompt_messages(self) -> list[dict]:
        """The conversation up to (not including) its last assistant turn."""
        last = max(i for i, m in enumerate(self.messages) if m["role"] == "assistant")
        return self.messages[:last]

    def instruction(self) -> str:
        """The text of the user turn the last assistant turn answers."""
        return _text_of(self.prompt_messages()[-1]["content"])

    def answer(self) -> str:
        """The text of the last assistant turn."""
        last = [m for m in self.messages if m["role"] == "assistant"][-1]
        return _text_of(last["content"])


@dataclass
class Examples:
    """Encoded samples ready for batching, plus what was dropped on the way."""

    items: list[dict] = field(default_factory=list)
    records: list[Record] = field(default_factory=list)
    dropped_too_long: int = 0


# -- reading -----------------------------------------------------------------------------------------


def read(path: str | Path, limit: int | None = None) -> list[Record]:
    """Read and validate every record of a JSONL or Parquet file; the first bad one raises DataError."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise DataError(str(path), "no such data file")
    rows = _parquet_rows(path) if path.suffix == ".parquet" else _jsonl_rows(path)
    records = []
    for where, row in rows:
        records.append(_record(row, where, path.parent))
        if limit is not None and len(records) >= limit:
            break
    if not records:
        raise DataError(str(path), "no records")
    return records


def _jsonl_rows(path: Path):
    with path.open() as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                yield f"{path}:{number}", json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"{path}:{number}", f"malformed JSON ({e.msg} at column {e.colno})") from None


def _parquet_rows(path: Path):
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except Exception as e:  # pyarrow raises several types for a broken file
        raise DataError(str(path), f"cannot read Parquet: {e}") from None
    for number, row in enumerate(table.to_pylist(), start=1):
        if isinstance(row.get("messages"), str):
            try:
                row["messages"] = json.loads(row["messages"])
            except json.JSONDecodeError as e:
                raise DataError(f"{path}:row {number}", f"messages is not valid JSON ({e.msg})") from None
        yield f"{path}:row {number}", row


def _record(row: Any, where: str, root: Path) -> Record:
    if not isinstance(row, dict) or not isinstance(row.get("messages"), list) or not row["messages"]:
        raise DataError(where, 'a record needs "messages": a non-empty list of {"role", "content"} turns')
    images: list[Any] = []
    messages = []
    for i, message in enumerate(row["messages"]):
        if not isinstance(message, dict) or message.get("role") not in ("system", "user", "assistant"):
            raise DataError(where, f"messages[{i}] needs a role of system, user or assistant")
        content = message.get("content")
        if isinstance(content, str):
            content = [{"type": "text", "text": content}]
        if not isinstance(content, list):
            raise DataError(where, f"messages[{i}].content must be a string or a list of items")
        items = []
        for j, item in enumerate(content):
            kind = item.get("type") if isinstance(item, dict) else None
            if kind == "text" and isinstance(item.get("text"), str):
                items.append({"type": "text", "text": item["text"]})
            elif kind == "image":
                images.append(_image_ref(item.get("image"), root, f"{where}: messages[{i}].content[{j}]"))
                items.append({"type": "image"})
            else:
                raise DataError(where, f"messages[{i}].content[{j}] must be a text or image item")
        messages.append({"role": message["role"], "content": items})
    if not any(m["role"] == "assistant" and _text_of(m["content"]).strip() for m in messages):
        raise DataError(where, "no assistant turn with text: there is nothing to learn from this record")
    return Record(messages, images, _bbox(row.get("bbox"), where), where)


def _image_ref(value: Any, root: Path, where: str) -> Any:
    if isinstance(value, (bytes, bytearray)):
        return bytes(value)
    if not isinstance(value, str) or not value:
        raise DataError(where, "an image item needs an image path (relative to the data file) or bytes")
    path = Path(value).expanduser()
    path = path if path.is_absolute() else root / path
    if not path.is_file():
        raise DataError(where, f"image not found: {path}")
    return str(path)


def _bbox(value: Any, where: str) -> tuple[float, float, float, float] | None:
    if value is None:
        return None
    ok = isinstance(value, list) and len(value) == 4 and all(isinstance(v, (int, float)) for v in value)
    if not ok or not (value[0] <= value[2] and value[1] <= value[3]):
        raise DataError(where, f"bbox must be [x0, y0, x1, y1] with x0 <= x1 and y0 <= y1, got {value!r}")
    return tuple(float(v) for v in value)


def _text_of(content: list[dict]) -> str:
    return "".join(item["text"] for item in content if item["type"] == "text")


def load_image(ref: Any):
    """A path or encoded bytes → an RGB PIL image."""
    from PIL import Image

    image = Image.open(io.BytesIO(ref) if isinstance(ref, bytes) else ref)
    return image.convert("RGB")


# -- encoding ----------------------------------------------------------------------------------------


def image_kwargs(min_pixels: int | None, max_pixels: int | None, processor) -> dict:
    """Processor call kwargs that bound the image area (and so the image tokens)."""
    size = dict(processor.image_processor.size)
    if min_pixels:
        size["shortest_edge"] = min_pixels
    if max_pixels:
        size["longest_edge"] = max_pixels
    return {"size": size}


def encode(records: list[Record], processor, max_length: int, image_kw: dict) -> Examples:
    """Tokenize records with the chat template and mask everything but assistant tokens."""
    out = Examples()
    header = _assistant_header(processor.tokenizer)
    end_id = processor.tokenizer.convert_tokens_to_ids("<|im_end|>")
    for record in records:
        text = processor.apply_chat_template(record.messages, tokenize=False)
        batch = _process(processor, text, record, image_kw)
        ids = batch["input_ids"][0]
        if ids.numel() > max_length:
            out.dropped_too_long += 1
            continue
        item = {key: value[0] for key, value in batch.items() if key in ("input_ids", "mm_token_type_ids")}
        item["labels"] = _labels(ids, header, end_id)
        for key in ("pixel_values", "image_grid_thw"):
            if key in batch:
                item[key] = batch[key]
        out.items.append(item)
        out.records.append(record)
    return out


def encode_file(
    path: str | Path,
    processor,
    max_length: int,
    image_kw: dict,
    *,
    limit: int | None = None,
    cache_dir: Path | None = None,
) -> Examples:
    """:func:`read` + :func:`encode`, cached on disk: the trials of a study share one encoding.

    The cache key covers the file (path, size, modification time), the processor's tokenizer and image
    settings, ``max_length``, the image bounds and ``limit``; a changed input is encoded again.
    """
    import hashlib
    import os

    import torch

    path = Path(path).expanduser()
    stat = path.stat() if path.is_file() else None
    key_parts = [
        str(path.resolve()),
        stat and (stat.st_size, stat.st_mtime_ns),
        max_length,
        limit,
        json.dumps(image_kw, sort_keys=True, default=str),
        processor.tokenizer.name_or_path,
        len(processor.tokenizer),
        json.dumps(processor.image_processor.to_dict(), sort_keys=True, default=str),
    ]
    key = hashlib.sha256(repr(key_parts).encode()).hexdigest()[:24]
    cached = cache_dir / f"{key}.pt" if cache_dir is not None else None
    if cached is not None and cached.is_file():
        try:
            return torch.load(cached, weights_only=False)  # our own file, written below
        except Exception:  # a torn or stale cache entry is simply rebuilt
            pass
    examples = encode(read(path, limit=limit), processor, max_length, image_kw)
    if cached is not None:
        cached.parent.mkdir(parents=True, exist_ok=True)
        tmp = cached.with_suffix(f".{os.getpid()}.tmp")
        torch.save(examples, tmp)
        os.replace(tmp, cached)
    return examples


def prompt_inputs(processor, messages: list[dict], images: list, image_kw: dict) -> dict:
    """Batch-of-one inputs for generating the assistant turn that follows ``messages`` (their images in
    order): what evaluation and serving both feed ``generate``."""
    text = processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    kwargs = {"images_kwargs": image_kw} if images else {}
    return dict(processor(text=[text], images=images or None, return_tensors="pt", **kwargs))


def _process(processor, text: str, record: Record, image_kw: dict):
    images = [load_image(ref) for ref in record.images] or None
    kwargs = {"images_kwargs": image_kw} if images else {}
    return processor(text=[text], images=images, return_tensors="pt", **kwargs)


def _assistant_header(tokenizer) -> tuple[int, list[int]]:
    start = tokenizer.convert_tokens_to_ids("<|im_start|>")
    return start, tokenizer.encode("assistant\n", add_special_tokens=False)


def _labels(ids, header: tuple[int, list[int]], end_id: int):
    import torch

    start, role = header
    labels = torch.full_like(ids, IGNORE_INDEX)
    seq = ids.tolist()
    i = 0
    while i < len(seq):
        if seq[i] == start and seq[i + 1 : i + 1 + len(role)] == role:
            j = i + 1 + len(role)
            k = j
            while k < len(seq) and seq[k] != end_id:
                k += 1
            labels[j : k + 1] = ids[j : k + 1]  # the answer and its <|im_end|>, so the model learns to stop
            i = k
        i += 1
    return labels


# -- batching ----------------------------------------------------------------------------------------


def collate(items: list[dict], pad_id: int) -> dict:
    """Right-pad a list of encoded samples into one batch."""
    import torch

    length = max(item["input_ids"].numel() for item in items)

    def pad(key: str, value: int):
        rows = [torch.nn.functional.pad(it[key], (0, length - it[key].numel()), value=value) for it in items]
        return torch.stack(rows)

    batch = {
        "input_ids": pad("input_ids", pad_id),
        "labels": pad("labels", IGNORE_INDEX),
        "attention_mask": torch.stack(
            [torch.arange(length) < it["input_ids"].numel() for it in items]
        ).long(),
    }
    if all("mm_token_type_ids" in it for it in items):
        batch["mm_token_type_ids"] = pad("mm_token_type_ids", 0)
    with_images = [it for it in items if "pixel_values" in it]
    if with_images:
        batch["pixel_values"] = torch.cat([it["pixel_values"] for it in with_images])
        batch["image_grid_thw"] = torch.cat([it["image_grid_thw"] for it in with_images])
    return batch


def batches(items: list[dict], batch_size: int, seed: int, rank: int = 0, world: int = 1):
    """Endless shuffled batches of this rank's shard (each epoch reshuffled deterministically)."""
    import random

    shard = items[rank::world] or items
    epoch = 0
    while True:
        order = list(range(len(shard)))
        random.Random(seed * 1_000_003 + epoch).shuffle(order)
        # Full batches only; a shard smaller than one batch is yielded whole.
        for i in range(0, max(len(order) - batch_size + 1, 1), batch_size):
            yield [shard[j] for j in order[i : i + batch_size]]
        epoch += 1
