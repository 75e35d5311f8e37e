"""Evaluation: loss on assistant tokens, and click accuracy from greedy generation.

A click is correct when the point parsed from ``click(x, y)`` lies inside the record's target ``bbox``
(both in Qwen3-VL's 0–1000 relative coordinates).
"""

from __future__ import annotations

from . import data, templates


def parse_click(text: str) -> tuple[float, float] | None:
    """The point a model's answer names, in any template's style (see :func:`templates.parse_point`)."""
    return templates.parse_point(text)


def is_hit(point: tuple[float, float] | None, bbox: tuple[float, float, float, float]) -> bool:
    """Whether a point lies inside ``[x0, y0, x1, y1]`` (edges included)."""
    if point is None:
        return False
    x, y = point
    return bbox[0] <= x <= bbox[2] and bbox[1] <= y <= bbox[3]


def eval_loss(model, items: list[dict], batch_size: int, pad_id: int, device) -> tuple[float, float]:
    """Summed token loss and token count over ``items`` (sum so ranks can be all-reduced exactly)."""
    import torch

    total, count = 0.0, 0.0
    model.eval()
    with torch.no_grad():
        for i in range(0, len(items), batch_size):
            batch = {k: v.to(device) for k, v in data.collate(items[i : i + batch_size], pad_id).items()}
            labels = batch.pop("labels")
            logits = model(**batch, use_cache=False).logits.float()
            shift_logits, shift_labels = logits[:, :-1], labels[:, 1:]
            loss = torch.nn.functional.cross_entropy(
                shift_logits.reshape(-1, shift_logits.size(-1)),
                shift_labels.reshape(-1),
                ignore_index=data.IGNORE_INDEX,
                reduction="sum",
            )
            total += float(loss)
            count += float((shift_labels != data.IGNORE_INDEX).sum())
    model.train()
    return total, count


def click_hits(model, records: list[data.Record], processor, image_kw: dict, max_new_tokens: int, device):
    """(hits, scored) over records that carry a bbox, generating greedily one record at a time."""
    import torch

    hits = scored = 0
    model.eval()
    with torch.no_grad():
        for record in records:
            if record.bbox is None:
                continue
            images = [data.load_image(ref) for ref in record.images]
            inputs = data.prompt_inputs(processor, record.prompt_messages(), images, image_kw)
            inputs = {k: v.to(device) for k, v in inputs.items()}
            out = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False, use_cache=True)
            text = processor.tokenizer.decode(
                out[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True
            )
            hits += is_hit(parse_click(text), record.bbox)
            scored += 1
    model.train()
    return hits, scored
