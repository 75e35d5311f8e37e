"""Load the base model (optionally 4-bit), attach LoRA to the resolved modules, build optimizer groups.

Everything here is set explicitly so a run starts without the warnings users learned to ignore:
non-reentrant activation checkpointing through the transformers 5 API, ``use_cache`` off where the
text config reads it, and pad/eos/bos ids aligned from the tokenizer before anything else looks at them.
"""

from __future__ import annotations

import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..errors import SpecError, TrialError
from . import quantization, scopes, sharding

if TYPE_CHECKING:
    import torch

    from ..spec import Spec


@dataclass
class Built:
    """A model ready to train, with what it trains."""

    model: torch.nn.Module
    processor: object
    resolution: scopes.Resolution
    model_type: str


def from_pretrained(path, **kwargs):
    """The checkpoint's model with transformers' own layers, for training and inference alike.

    transformers 5.2x swaps layers for kernels fetched from the Hugging Face Hub when the model is on a GPU,
    unless told not to: on an offline GPU node every trial then failed to load (seen on an H200), and on a
    connected one the numbers would rest on whatever code the Hub served that day.
    """
    from transformers import AutoModelForImageTextToText

    return AutoModelForImageTextToText.from_pretrained(path, use_kernels=False, **kwargs)


def resolve_dtype(name: str, device: torch.device):
    """``auto`` → bfloat16 on GPUs that support it, float32 elsewhere."""
    import torch

    if name == "auto":
        cuda_bf16 = device.type == "cuda" and torch.cuda.is_bf16_supported()
        return torch.bfloat16 if cuda_bf16 else torch.float32
    return getattr(torch, name)


def load_processor(spec: Spec, path: str):
    """The model's processor, from the same place as the weights."""
    from transformers import AutoProcessor

    return AutoProcessor.from_pretrained(
        path, revision=spec.model.revision, trust_remote_code=spec.model.trust_remote_code
    )


def build(spec: Spec, path: str, device: torch.device) -> Built:
    """Base model + processor + LoRA on exactly the modules the spec's scope resolves to."""
    import torch

    quantization.import_quietly()
    from transformers import AutoConfig
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    config = AutoConfig.from_pretrained(
        path, revision=spec.model.revision, trust_remote_code=spec.model.trust_remote_code
    )
    model_type = config.model_type
    dtype = resolve_dtype(spec.model.dtype, device)
    quant = quantization.config(spec.training.quantization, dtype, model_type)
    processor = load_processor(spec, path)
    _align_special_tokens(config, processor.tokenizer)
    sharded = sharding.is_sharded(spec)
    if sharding.loads_on_meta(spec):
        model = sharding.empty_model(config, spec, path, dtype)
    else:
        model = from_pretrained(
            path,
            config=config,
            revision=spec.model.revision,
            trust_remote_code=spec.model.trust_remote_code,
            dtype=dtype,
            attn_implementation=spec.model.attn_implementation,
            quantization_config=quant,
            device_map={"": device} if quant is not None and device.type == "cuda" else None,
        )
    if quant is None and not sharded:
        model.to(device)
    elif quant is not None:
        quantization.keep_trainable(model)
    align_generation(model.generation_config, processor.tokenizer)
    resolution = resolve(spec, model, model_type)
    model = attach_lora(model, spec, resolution)
    if spec.training.gradient_checkpointing:
        model.get_base_model().activation_checkpointing_enable({"use_reentrant": False})
    if sharded:
        model = sharding.shard(model, spec, device, dtype)
    torch.manual_seed(spec.training.seed)
    return Built(model, processor, resolution, model_type)


def resolve(spec: Spec, model, model_type: str) -> scopes.Resolution:
    """The spec's scope (or seed-style target_modules) on this model's real module names."""
    lora = spec.training.lora
    try:
        if lora.target_modules is not None:
            return scopes.resolve_target_modules(model, model_type, lora.target_modules)
        return scopes.resolve_scopes(model, model_type, lora.scope)
    except scopes.ScopeError as e:
        path = "training.lora.target_modules" if lora.target_modules is not None else "training.lora.scope"
        raise SpecError(path, str(e)) from None


def _align_special_tokens(config, tokenizer) -> None:
    # Align once, explicitly, from the tokenizer (Qwen has no BOS) instead of letting a trainer rewrite the
    # configs later with its "new PAD/BOS/EOS tokens" notice.
    ids = {
        "pad_token_id": tokenizer.pad_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "bos_token_id": None,
    }
    for cfg in (config, getattr(config, "text_config", None)):
        if cfg is not None:
            for key, value in ids.items():
                setattr(cfg, key, value)
            cfg.use_cache = False  # transformers reads text_config.use_cache under checkpointing


def align_generation(gen, tokenizer) -> None:
    """Greedy decoding with the tokenizer's pad/eos ids: hub generation configs carry sampling settings
    that transformers warns about under greedy decoding."""
    gen.pad_token_id = tokenizer.pad_token_id
    gen.eos_token_id = tokenizer.eos_token_id
    gen.bos_token_id = None
    gen.do_sample = False
    for key in ("temperature", "top_p", "top_k"):
        setattr(gen, key, None)


def attach_lora(model, spec: Spec, resolution: scopes.Resolution):
    """Wrap with PEFT LoRA targeting exactly ``resolution.names()``; everything else frozen."""
    from peft import LoraConfig, get_peft_model

    lora = spec.training.lora
    config = LoraConfig(
        r=lora.r,
        lora_alpha=lora.lora_alpha,
        lora_dropout=lora.dropout,
        target_modules=resolution.names(),
        bias="none",
    )
    with peft_quietly():
        return get_peft_model(model, config)


@contextmanager
def peft_quietly():
    """Around PEFT wrapping a model (``get_peft_model``, ``PeftModel.from_pretrained``): PEFT 0.21 reads
    transformers' deprecated ``is_gradient_checkpointing`` there, a FutureWarning nothing a user can
    change."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated")
        yield


def param_groups(model, model_type: str, spec: Spec) -> list[dict]:
    """One optimizer group per learning-rate part (llm / vision / projector+deepstack), decay and no-decay."""
    rates = spec.training.learning_rate
    lr_of = {
        "llm": rates.llm,
        "vision": rates.vision,
        "projector": rates.projector,
        "deepstack": rates.projector,
    }
    groups: dict[tuple[str, bool], list] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        part = scopes.part_of(name, model_type)
        if part is None:
            raise TrialError(f"trainable parameter {name} belongs to no scope")
        decay = param.ndim >= 2
        groups.setdefault((part, decay), []).append(param)
    return [
        {
            "params": params,
            "lr": lr_of[part],
            "weight_decay": spec.training.weight_decay if decay else 0.0,
            "name": f"{part}{'' if decay else '/no_decay'}",
        }
        for (part, decay), params in groups.items()
    ]


def trainable_by_part(model, model_type: str) -> dict[str, int]:
    """Trainable parameter count per part, as the optimizer sees them."""
    counts = {part: 0 for part in scopes.PARTS}
    for name, param in model.named_parameters():
        if param.requires_grad:
            counts[scopes.part_of(name, model_type)] += param.numel()
    return counts


def check_gradients(model, model_type: str, resolution: scopes.Resolution) -> None:
    """After the first backward: every part the trial trains must have received a non-zero gradient."""
    import torch

    norms = {part: 0.0 for part in resolution.parts()}
    sharded = False
    for name, param in model.named_parameters():
        if param.requires_grad and param.grad is not None:
            grad = param.grad.detach()
            if hasattr(grad, "to_local"):  # FSDP: this rank's shard; the parts' sums are added up below
                grad, sharded = grad.to_local(), True
            part = scopes.part_of(name, model_type)
            norms[part] = norms.get(part, 0.0) + float(grad.float().abs().sum())
    if sharded:
        total = torch.tensor(list(norms.values()), dtype=torch.float64, device=grad.device)
        torch.distributed.all_reduce(total)
        norms = dict(zip(norms, total.tolist(), strict=True))
    starved = [part for part, norm in norms.items() if norm == 0.0]
    if starved:
        raise TrialError(
            f"LoRA on {', '.join(starved)} received no gradient in the first step; "
            "the scope would silently train nothing there (check activation checkpointing and the inputs)"
        )
