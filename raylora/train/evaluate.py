"""Evaluation: loss on assistant tokens, and GUI-agent metrics from batched greedy generation.

What an output means is :mod:`.actions`' business and how it scores is :mod:`.scoring`'s; this module only
generates (left padding, the data's own prompt) and hands the text over — so the trainer, ``raylora eval``
and ``raylora score`` report the same numbers for the same outputs.
"""

from __future__ import annotations

from ..data import actions, samples, scoring
from . import encode


def parse_click(text: str) -> tuple[float, float] | None:
    """The point a model's answer names, in any format :mod:`.actions` reads (as written), or None."""
    action = actions.parse(text)
    return action.point if action is not None else None


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
            batch = {k: v.to(device) for k, v in encode.collate(items[i : i + batch_size], pad_id).items()}
            labels = batch.pop("labels")
            logits = model(**batch, use_cache=False).logits.float()
            shift_logits, shift_labels = logits[:, :-1], labels[:, 1:]
            loss = torch.nn.functional.cross_entropy(
                shift_logits.reshape(-1, shift_logits.size(-1)),
                shift_labels.reshape(-1),
                ignore_index=encode.IGNORE_INDEX,
                reduction="sum",
            )
            total += float(loss)
            count += float((shift_labels != encode.IGNORE_INDEX).sum())
    model.train()
    return total, count


def generate(
    model,
    records: list[samples.Sample],
    processor,
    image_kw: dict,
    max_new_tokens: int,
    batch_size: int,
    device,
) -> list[str]:
    """The model's greedy answer to each record's prompt (its conversation up to the last assistant turn),
    ``batch_size`` records per ``generate`` call with left padding."""
    import torch

    tokenizer = processor.tokenizer
    side, tokenizer.padding_side = tokenizer.padding_side, "left"
    was_training = model.training
    model.eval()
    outputs: list[str] = []
    try:
        with torch.no_grad():
            for i in range(0, len(records), batch_size):
                chunk = records[i : i + batch_size]
                texts = [
                    processor.apply_chat_template(
                        r.prompt_messages(), tokenize=False, add_generation_prompt=True
                    )
                    for r in chunk
                ]
                images = [samples.load_image(ref) for r in chunk for ref in r.images]
                kwargs = {"images_kwargs": image_kw} if images else {}
                inputs = processor(
                    text=texts, images=images or None, return_tensors="pt", padding=True, **kwargs
                )
                inputs = {k: v.to(device) for k, v in inputs.items()}
                out = model.generate(
                    **inputs,
                    max_new_tokens=max_new_tokens,
                    do_sample=False,
                    use_cache=True,
                    pad_token_id=tokenizer.pad_token_id,
                )
                start = inputs["input_ids"].shape[1]
                outputs.extend(_decode(tokenizer, row[start:]) for row in out)
    finally:
        tokenizer.padding_side = side
        model.train(was_training)
    return outputs


def _decode(tokenizer, ids) -> str:
    """The answer up to its end token, special tokens kept (UI-TARS' ``<|box_start|>`` is one) but pads."""
    ends = {tokenizer.eos_token_id, tokenizer.convert_tokens_to_ids("<|im_end|>")}
    kept = []
    for token in ids.tolist():
        if token in ends:
            break
        if token != tokenizer.pad_token_id:
            kept.append(token)
    return tokenizer.decode(kept, skip_special_tokens=False)


def outcomes(
    model,
    records: list[samples.Sample],
    processor,
    image_kw: dict,
    convention: str,
    max_new_tokens: int,
    batch_size: int,
    device,
) -> list[scoring.Outcome | None]:
    """Generate for ``records`` and score each output against its record (answers in ``convention``)."""
    goals = scoring.goals(records, convention, encode.bounds(processor, image_kw))
    wanted = [i for i, goal in enumerate(goals) if goal.reference is not None]
    texts = generate(
        model, [records[i] for i in wanted], processor, image_kw, max_new_tokens, batch_size, device
    )
    result: list[scoring.Outcome | None] = [None] * len(records)
    for i, text in zip(wanted, texts, strict=True):
        result[i] = scoring.score(text, goals[i])
    return result
