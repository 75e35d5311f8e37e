"""The data loader: records read once, screenshots decoded and processed only when a batch needs them.

    records (paths, categories, boxes; image bytes spilled to files) → length index (cached on disk)
      → drop too-long samples → rank's shard, shuffled per epoch → DataLoader workers encode → batches

Nothing holds the processed dataset: an encoded screenshot is ~24 MB of float32 patches at
``scope_study.yaml``'s ``max_pixels``, so 10,000 of them held per worker fit no machine. What stays in memory
is one :class:`~raylora.data.samples.Sample` per sample (paths and text) and one integer per sample, the
sample's token length, which is computed from the image *header* (size) and the tokenized text without
decoding a pixel, and cached on disk as JSON so the trials of a study share it.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from ..data import coordinates, samples
from ..errors import DataError
from ..files import write_atomic
from . import encode


class Encoded:
    """A lazy sequence of encoded samples: ``items[i]`` decodes and processes record ``i`` on access; slices
    are lazy too. This is the map-style dataset the DataLoader's workers read."""

    def __init__(self, records: list[samples.Sample], processor, image_kw: dict, raising: bool = True):
        self.raising = raising  # False in DataLoader workers: errors travel back as data (see _Collate)
        self.records = records
        self.processor = processor
        self.image_kw = image_kw
        self._header = encode._assistant_header(processor.tokenizer)
        self._end_id = processor.tokenizer.convert_tokens_to_ids("<|im_end|>")

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index):
        if isinstance(index, slice):
            view = Encoded.__new__(Encoded)
            view.__dict__.update(self.__dict__, records=self.records[index])
            return view
        item = encode.encode_one(
            self.records[index], self.processor, self.image_kw, self._header, self._end_id
        )
        if self.raising and isinstance(item, DataError):
            raise item
        return item

    def __iter__(self):
        return (self[i] for i in range(len(self)))


@dataclass
class Split:
    """One split of a dataset, ready to load lazily: its kept records, their lazy encodings, and what was
    dropped on the way."""

    records: list[samples.Sample]
    items: Encoded
    lengths: list[int]
    dropped_too_long: int = 0


def open_split(
    ref: str,
    processor,
    max_length: int,
    image_kw: dict,
    *,
    limit: int | None = None,
    cache_dir: Path | None = None,
    fmt: str = "auto",
    coordinates: str = "qwen3vl",
    template: str = "click",
    columns: dict | None = None,
    categories: list[str] | None = None,
    on_indexed: Callable[[int, int], None] | None = None,
) -> Split:
    """Read ``ref``'s records and their token lengths (from the on-disk index when it is current) and drop
    the samples longer than ``max_length`` — without decoding a screenshot. ``on_indexed(done, total)``
    hears how far measuring the lengths is, when they are not in the index."""
    spill = cache_dir.parent / "images" if cache_dir is not None else None
    records = samples.read(
        ref,
        limit,
        fmt,
        coordinates,
        template,
        spill_dir=spill,
        columns=columns,
        categories=categories,
        bounds=encode.bounds(processor, image_kw),
    )
    index = (
        cache_dir / f"{_key(ref, processor, image_kw, limit, (fmt, coordinates, template, columns))}.json"
        if (cache_dir is not None)
        else None
    )
    lengths = _cached(index, len(records))
    if lengths is None:
        lengths = []
        for record in records:
            lengths.append(token_length(record, processor, image_kw))
            if on_indexed is not None:
                on_indexed(len(lengths), len(records))
        if index is not None:
            index.parent.mkdir(parents=True, exist_ok=True)
            write_atomic(index, json.dumps(lengths))
    kept = [(r, n) for r, n in zip(records, lengths, strict=True) if n <= max_length]
    records = [r for r, _ in kept]
    return Split(
        records, Encoded(records, processor, image_kw), [n for _, n in kept], len(lengths) - len(kept)
    )


def token_length(record: samples.Sample, processor, image_kw: dict) -> int:
    """The length in tokens of ``record`` once encoded, from its text and its images' sizes alone."""
    text = processor.apply_chat_template(record.messages, tokenize=False)
    ids = processor.tokenizer(text, add_special_tokens=False)["input_ids"]
    return len(ids) + sum(
        image_tokens(samples.image_size(ref, record.where), processor, image_kw) - 1 for ref in record.images
    )


def image_tokens(size: coordinates.Size, processor, image_kw: dict) -> int:
    """How many ``<|image_pad|>`` tokens the processor expands one image of ``size`` (width, height) into."""
    image_processor = processor.image_processor
    bounds = image_kw.get("size", image_processor.size)
    patch, merge = image_processor.patch_size, image_processor.merge_size
    width, height = coordinates.resized_size(
        size, bounds["shortest_edge"], bounds["longest_edge"], factor=patch * merge
    )
    return (width // patch) * (height // patch) // (merge * merge)


def workers(spec) -> int:
    """``data.loader_workers``, or by default the training worker's CPUs but the one it trains on."""
    if spec.data.loader_workers is not None:
        return spec.data.loader_workers
    return max(0, int(spec.resources.cpus_per_worker) - 1)


def batches(
    split: Split,
    batch_size: int,
    pad_id: int,
    seed: int,
    *,
    rank: int = 0,
    world: int = 1,
    skip: int = 0,
    workers: int = 0,
) -> Iterator[dict]:
    """Endless collated batches of this rank's shard, encoded by ``workers`` DataLoader processes ahead of
    the training step; the first ``skip`` batches (a resumed run's past) are skipped without decoding."""
    from torch.utils.data import DataLoader

    sampler = _Batches(len(split.items), batch_size, seed, rank, world, skip)
    dataset = split.items[:]
    dataset.raising = False
    loader = DataLoader(
        dataset,
        batch_sampler=sampler,
        collate_fn=_Collate(pad_id),
        num_workers=workers,
        prefetch_factor=4 if workers else None,
        persistent_workers=bool(workers),
    )
    for batch in loader:
        if "error" in batch:
            raise DataError(*batch["error"])
        yield batch


class _Batches:
    """Index batches of one rank's shard, reshuffled each epoch (the same order for the same seed)."""

    def __init__(self, size: int, batch_size: int, seed: int, rank: int, world: int, skip: int):
        self.shard = list(range(rank, size, world)) or list(range(size))
        self.batch_size, self.seed, self.skip = batch_size, seed, skip

    def __iter__(self) -> Iterator[list[int]]:
        import random

        epoch = drawn = 0
        while True:
            order = list(self.shard)
            random.Random(self.seed * 1_000_003 + epoch).shuffle(order)
            # Full batches only; a shard smaller than one batch is yielded whole.
            for i in range(0, max(len(order) - self.batch_size + 1, 1), self.batch_size):
                drawn += 1
                if drawn > self.skip:
                    yield order[i : i + self.batch_size]
            epoch += 1


class _Collate:
    """Collate in the DataLoader worker; a bad record travels to the training process as data, since a
    DataError raised in a worker loses its record on the way back."""

    def __init__(self, pad_id: int):
        self.pad_id = pad_id

    def __call__(self, items: list) -> dict:
        for item in items:
            if isinstance(item, DataError):
                return {"error": (item.where, item.message)}
        return encode.collate(items, self.pad_id)


def _key(ref: str, processor, image_kw: dict, limit, reading) -> str:
    path = Path(ref.split("#")[0]).expanduser()
    stat = path.stat() if path.exists() else None
    parts = [
        str(path.resolve()) if path.exists() else ref,
        ref,
        stat and (stat.st_size, stat.st_mtime_ns),
        limit,
        reading,
        json.dumps(image_kw, sort_keys=True, default=str),
        processor.tokenizer.name_or_path,
        len(processor.tokenizer),
        json.dumps(processor.image_processor.to_dict(), sort_keys=True, default=str),
        getattr(processor, "chat_template", None),
    ]
    return hashlib.sha256(repr(parts).encode()).hexdigest()[:24]


def _cached(index: Path | None, count: int) -> list[int] | None:
    if index is None or not index.is_file():
        return None
    try:
        lengths = json.loads(index.read_text())
    except ValueError:  # a torn entry is rebuilt
        return None
    return lengths if isinstance(lengths, list) and len(lengths) == count else None
