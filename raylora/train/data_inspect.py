"""``raylora data inspect``: how raylora reads a dataset, before any compute is spent on it.

The detected format, the records and images, the image tokens at the spec's pixel bounds, the supervised
tokens, the records that would be dropped as too long, the range of coordinates seen against the declared
convention, and one record rendered with its supervised span marked.
"""

from __future__ import annotations

import re
from pathlib import Path

from ..data import actions, coordinates, formats, samples, templates
from ..errors import DataError
from . import encode, loader

MARK_START, MARK_END = "⟦", "⟧"


def inspect(ref: str, spec, limit: int | None = None) -> dict:
    """What raylora sees in dataset ``ref`` read as ``spec.data`` says (format, coordinates, template)."""
    from .. import builtin
    from . import model as model_lib

    fmt = spec.data.format
    if fmt in ("auto", "hf"):
        where, row, _ = next(
            formats.rows(ref, "chat", spec.data.coordinates, spec.data.template, spec.data.columns)
        )
        if isinstance(row, DataError):  # the first record, refused by the reader (video, a bad item)
            raise row
        fmt = formats.detect(row, where)
    processor = model_lib.load_processor(spec, builtin.resolve_model(spec.model.name_or_path))
    image_kw = encode.image_kwargs(spec.data.image.min_pixels, spec.data.image.max_pixels, processor)
    records = samples.read(ref, limit, **spec.data.reading(), bounds=encode.bounds(processor, image_kw))
    answer_convention = templates.get(spec.data.template).answer_convention(spec.data.coordinates)
    # Lengths from image headers and text alone: a dataset larger than memory is inspected without
    # decoding its screenshots (only the rendered example is encoded).
    lengths = [loader.token_length(record, processor, image_kw) for record in records]
    kept = [r for r, n in zip(records, lengths, strict=True) if n <= spec.data.max_length]
    image_tokens = sum(
        loader.image_tokens(samples.image_size(ref, r.where), processor, image_kw)
        for r in kept
        for ref in r.images
    )
    supervised = sum(_supervised_tokens(record, processor) for record in kept)
    report = {
        "format": fmt,
        "records": len(records),
        "images": sum(len(r.images) for r in records),
        "image_tokens_total": image_tokens,
        "supervised_tokens_total": supervised,
        "dropped_too_long": len(records) - len(kept),
        "max_length": spec.data.max_length,
        "coordinates": _coordinate_range(records, answer_convention),
        "template": spec.data.template,
        "categories": _categories(records),
    }
    if kept:
        item = encode.encode_one(kept[0], processor, image_kw)
        if isinstance(item, DataError):
            raise item
        report["example"] = {"where": kept[0].where, "rendered": _rendered(item, processor)}
    return report


def _supervised_tokens(record: samples.Sample, processor) -> int:
    """Tokens of the record's assistant turns (and their ends): the text alone decides them."""
    import torch

    text = processor.apply_chat_template(record.messages, tokenize=False)
    ids = torch.tensor(processor.tokenizer(text, add_special_tokens=False)["input_ids"])
    end_id = processor.tokenizer.convert_tokens_to_ids("<|im_end|>")
    labels = encode._labels(ids, encode._assistant_header(processor.tokenizer), end_id)
    return int((labels != encode.IGNORE_INDEX).sum())


def _coordinate_range(records: list[samples.Sample], convention: str) -> dict:
    """The x and y range of the points in the answers and the boxes, against the convention's range."""
    xs, ys = [], []
    for record in records:
        if point := getattr(actions.parse(record.answer()), "point", None):
            xs.append(point[0])
            ys.append(point[1])
        if record.bbox is not None:
            xs += [record.bbox[0], record.bbox[2]]
            ys += [record.bbox[1], record.bbox[3]]
    chosen = coordinates.get(convention)
    out = {
        "convention": convention,
        "x": [min(xs), max(xs)] if xs else None,
        "y": [min(ys), max(ys)] if ys else None,
    }
    if chosen.relative is not None and xs:
        out["within_range"] = all(0 <= v <= chosen.relative for v in xs + ys)
    return out


def _categories(records: list[samples.Sample]) -> dict:
    out: dict[str, dict[str, int]] = {}
    for record in records:
        for field, value in record.categories.items():
            out.setdefault(field, {}).setdefault(value, 0)
            out[field][value] += 1
    return out


def _rendered(item: dict, processor) -> str:
    """The first sample as the model reads it, image pads collapsed, the supervised span marked ⟦...⟧."""
    tokenizer = processor.tokenizer
    ids, labels = item["input_ids"].tolist(), item["labels"].tolist()
    pieces, inside = [], False
    for token, label in zip(ids, labels, strict=True):
        supervised = label != encode.IGNORE_INDEX
        if supervised != inside:
            pieces.append(MARK_START if supervised else MARK_END)
            inside = supervised
        pieces.append(tokenizer.decode([token]))
    if inside:
        pieces.append(MARK_END)
    text = "".join(pieces)
    return re.sub(r"(<\|image_pad\|>)+", lambda m: f"<|image_pad|>×{len(m.group(0)) // 13}", text)


def is_spec(path: str) -> bool:
    """Whether ``path`` names a study spec (YAML) rather than a dataset."""
    return Path(path).suffix in (".yaml", ".yml")
