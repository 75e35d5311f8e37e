"""Records → the model's inputs: the chat template, labels that supervise only the assistant's tokens, and
right-padded batches. One sample at a time (:func:`encode_one`), as the loader's dataset asks for it.

A sample longer than ``max_length`` is dropped and counted by the loader (:mod:`.loader`), never truncated,
because cutting inside an image span breaks the image-feature/token correspondence.
"""

from __future__ import annotations

from ..data.samples import Sample, load_image
from ..errors import DataError

IGNORE_INDEX = -100


def image_kwargs(min_pixels: int | None, max_pixels: int | None, processor) -> dict:
    """Processor call kwargs that bound the image area (and so the image tokens)."""
    size = dict(processor.image_processor.size)
    if min_pixels:
        size["shortest_edge"] = min_pixels
    if max_pixels:
        size["longest_edge"] = max_pixels
    return {"size": size}


def bounds(processor, image_kw: dict):
    """The image-area bounds and side multiple ``processor`` resizes with (what ``resized-pixels`` mean)."""
    from ..data.coordinates import Bounds

    image_processor = processor.image_processor
    size = image_kw.get("size", image_processor.size)
    factor = image_processor.patch_size * image_processor.merge_size
    return Bounds(size["shortest_edge"], size["longest_edge"], factor)


def encode_one(record: Sample, processor, image_kw: dict, header=None, end_id=None) -> dict | DataError:
    """One record tokenized with the chat template, everything but assistant tokens masked; a DataError
    (returned, not raised: it must cross a DataLoader worker whole) when an image cannot be decoded."""
    header = header or _assistant_header(processor.tokenizer)
    end_id = end_id if end_id is not None else processor.tokenizer.convert_tokens_to_ids("<|im_end|>")
    text = processor.apply_chat_template(record.messages, tokenize=False)
    try:
        batch = _process(processor, text, record, image_kw)
    except DataError as e:
        return e
    ids = batch["input_ids"][0]
    item = {key: value[0] for key, value in batch.items() if key in ("input_ids", "mm_token_type_ids")}
    item["labels"] = _labels(ids, header, end_id)
    for key in ("pixel_values", "image_grid_thw"):
        if key in batch:
            item[key] = batch[key]
    return item


def prompt_inputs(processor, messages: list[dict], images: list, image_kw: dict) -> dict:
    """Batch-of-one inputs for generating the assistant turn that follows ``messages`` (their images in
    order): what evaluation and serving both feed ``generate``."""
    text = processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    kwargs = {"images_kwargs": image_kw} if images else {}
    return dict(processor(text=[text], images=images or None, return_tensors="pt", **kwargs))


def _process(processor, text: str, record: Sample, image_kw: dict):
    images = [load_image(ref, record.where) for ref in record.images] or None
    kwargs = {"images_kwargs": image_kw} if images else {}
    return processor(text=[text], images=images, return_tensors="pt", **kwargs)


def _assistant_header(tokenizer) -> tuple[int, list[int], set[int]]:
    start = tokenizer.convert_tokens_to_ids("<|im_start|>")
    names = ("<|vision_start|>", "<|image_pad|>", "<|vision_end|>")
    vision = {tokenizer.convert_tokens_to_ids(t) for t in names}
    return start, tokenizer.encode("assistant\n", add_special_tokens=False), vision - {None}


def _labels(ids, header: tuple[int, list[int], set[int]], end_id: int):
    import torch

    start, role, vision = header
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
    for token in vision:  # an image inside an assistant turn (ms-swift's pre-training records) is input
        labels[ids == token] = IGNORE_INDEX
    return labels


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
