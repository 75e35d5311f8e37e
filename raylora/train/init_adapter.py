"""``training.init_adapter``: start each trial from an earlier adapter — the note's Q1 as a procedure:
train LLM-only first, then search "+vision, +projector on top of the best LLM-only adapter".

Modules the earlier adapter has keep its LoRA weights; modules it lacks (a newly added scope) start as PEFT
initializes them. The reference is an adapter folder (``adapter_model.safetensors``) or
``study:NAME:best``, the best trial of study NAME in the same storage, resolved on the driver before any
trial starts (:func:`resolve`).
"""

from __future__ import annotations

import json
from pathlib import Path

from ..errors import TrialError, UserError
from ..layout import SUMMARY

WHERE = "training.init_adapter"
WEIGHTS = "adapter_model.safetensors"


def resolve(ref: str, storage_root: str) -> str:
    """The adapter folder ``ref`` names (``study:NAME:best`` looked up in ``storage_root``); a user error
    when there is none."""
    if ref.startswith("study:"):
        parts = ref.split(":")
        if len(parts) != 3 or parts[2] != "best" or not parts[1]:
            raise UserError(WHERE, f"must be a folder or study:NAME:best, got {ref!r}")
        summary = Path(storage_root).expanduser() / parts[1] / SUMMARY
        if not summary.is_file():
            raise UserError(WHERE, f"{ref}: no study {parts[1]!r} in {storage_root} (no {summary})")
        best = json.loads(summary.read_text()).get("best_trial")
        if not best or not best.get("adapter_path"):
            raise UserError(WHERE, f"{ref}: study {parts[1]!r} has no complete trial with an adapter yet")
        ref = best["adapter_path"]
    if "://" in ref:
        raise UserError(WHERE, f"{ref}: give a local or shared folder (copy the adapter there first)")
    if not (Path(ref) / WEIGHTS).is_file():
        raise UserError(WHERE, f"{ref}: no {WEIGHTS} there (an adapter folder, e.g. a trial's adapter/)")
    return str(Path(ref).resolve())


def load_into(peft_model, ref: str) -> dict[str, int]:
    """Load the adapter at ``ref`` into the modules ``peft_model`` shares with it; return how many LoRA
    tensors were loaded and how many start fresh."""
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    weights = load_file(str(Path(ref) / WEIGHTS))
    try:
        result = set_peft_model_state_dict(peft_model, weights)
    except RuntimeError as e:  # a size mismatch: another rank
        first = str(e).split("\n\t")[1] if "\n\t" in str(e) else str(e)
        message = f"{WHERE} {ref} does not fit this trial's LoRA (another training.lora.r?): {first}"
        raise TrialError(message) from None
    if result.unexpected_keys:
        raise TrialError(
            f"{WHERE} {ref} has LoRA modules this trial does not train ({len(result.unexpected_keys)}, e.g. "
            f"{result.unexpected_keys[0]}): a later stage's scope must include the earlier one's"
        )
    fresh = [k for k in result.missing_keys if "lora_" in k]
    lora = [k for k, _ in peft_model.named_parameters() if "lora_" in k]
    return {"loaded": len(lora) - len(fresh), "fresh": len(fresh)}


def with_resolved(spec, storage_root: str):
    """``spec`` with ``training.init_adapter`` resolved to a folder (unchanged when it has none)."""
    ref = spec.training.init_adapter
    if not ref:
        return spec
    training = spec.training.model_copy(update={"init_adapter": resolve(ref, storage_root)})
    return spec.model_copy(update={"training": training})
