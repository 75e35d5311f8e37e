"""Everything raylora knows about bitsandbytes: the 4-bit config it loads with, which modules that
quantizes, the bytes an NF4 weight takes, and how to import (or keep out) the library quietly.

``nf4`` quantizes every ``nn.Linear`` but ``lm_head``; ``nf4-llm-only`` keeps the vision tower and its
mergers in full precision too (4-bit vision broke Qwen2-VL outputs in Unsloth's measurements).
"""

from __future__ import annotations

import importlib.util
import logging

NONE = "none"
FOUR_BIT = ("nf4", "nf4-llm-only")

# Kept in full precision by nf4-llm-only (lm_head is always kept: see config()).
_VISION_MODULES = {
    "qwen3_vl": ["model.visual"],
    "qwen3_vl_moe": ["model.visual"],
    "qwen2_5_vl": ["model.visual"],
}

# bitsandbytes NF4 with double quantization (what config() asks for): per quantized Linear weight of n
# elements
#   packed 4-bit data  (n + 1) // (2 * s) elements of the storage dtype (s bytes; quant_storage = model dtype)
#   absmax             ceil(n / 64) uint8 (the absmax of each 64-block, itself quantized to 8 bits)
#   nested absmax      ceil(ceil(n / 64) / 256) float32
#   NF4 code + offset  16 float32 + 1 float32
#   nested code        256 float32 (the 8-bit dynamic map; each layer's quant state holds its own copy)
# Total ≈ n × (0.5 + 1/64 + 1/4096) + 1092 bytes.
NF4_BLOCK = 64
NF4_NESTED_BLOCK = 256
NF4_PER_LAYER_BYTES = 16 * 4 + 4 + 256 * 4


def skipped_modules(kind: str, model_type: str) -> list[str]:
    """Module prefixes left unquantized: ``lm_head`` always, the vision tower for ``nf4-llm-only``."""
    # Giving llm_int8_skip_modules replaces transformers' default skips, so lm_head must be named here.
    return ["lm_head"] + (_VISION_MODULES[model_type] if kind == "nf4-llm-only" else [])


def config(kind: str, dtype, model_type: str):
    """A ``BitsAndBytesConfig`` for ``nf4`` / ``nf4-llm-only``, or None for ``none``."""
    if kind == NONE:
        return None
    import_quietly()
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=dtype,
        bnb_4bit_quant_storage=dtype,
        llm_int8_skip_modules=skipped_modules(kind, model_type),
    )


def quantized_modules(meta, model_type: str, kind: str) -> set[str]:
    """Names of the Linear layers bitsandbytes turns into 4-bit ones for ``kind`` (none: empty).

    The same rule transformers applies when loading: exact ``nn.Linear`` modules, minus the skip list
    and the model's ``_keep_in_fp32_modules``. Needs no bitsandbytes import.
    """
    if kind == NONE:
        return set()
    import torch
    from transformers.quantizers.quantizers_utils import should_convert_module

    skip = skipped_modules(kind, model_type) + list(getattr(meta, "_keep_in_fp32_modules", None) or [])
    return {
        name
        for name, module in meta.named_modules()
        if type(module) is torch.nn.Linear and should_convert_module(name, skip)
    }


def nf4_weight_bytes(numel: int, storage_bytes: int) -> int:
    """Bytes of one NF4 weight of ``numel`` elements with its double-quantized state."""
    packed = (numel + 1) // (2 * storage_bytes) * storage_bytes
    blocks = -(-numel // NF4_BLOCK)
    nested = -(-blocks // NF4_NESTED_BLOCK)
    return packed + blocks + 4 * nested + NF4_PER_LAYER_BYTES


def import_quietly() -> None:
    """Import bitsandbytes (if installed) without its notice about the optional ``kernels`` package."""
    # On AVX512-BF16 CPUs bitsandbytes logs a warning when the optional `kernels` hub package is absent;
    # it then uses its built-in CPU kernel, so the notice is noise for our users.
    if importlib.util.find_spec("bitsandbytes") is None:
        return
    log = logging.getLogger("bitsandbytes.backends.cpu.ops")
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        import bitsandbytes  # noqa: F401
    finally:
        log.setLevel(level)


def keep_trainable(model) -> None:
    """Keep a 4-bit model trainable across eval phases on CPU."""
    # On AVX512-BF16 CPUs, bitsandbytes 0.50 repacks 4-bit weights for inference on the first forward in
    # eval mode and cannot train on the repacked weights afterwards; we alternate train and eval.
    for module in model.modules():
        if hasattr(module, "support_avx512bf16_for_cpu"):
            module.support_avx512bf16_for_cpu = False


def keep_out() -> None:
    """Keep this process from importing bitsandbytes (for a study that never quantizes).

    PEFT and transformers import it eagerly whenever it is installed, which costs a worker a second or more.
    """
    import sys

    sys.modules.setdefault("bitsandbytes", None)
