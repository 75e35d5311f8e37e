"""Peak accelerator memory of one trial, from the model config alone (meta device, no weights, no data).

    total = weights + lora + grads + optimizer + activations

With ``resources.sharding: fsdp`` each term is one worker's: FSDP2 shards weights, LoRA, gradients and
optimizer state across the trial's workers, and gathers whole units while they compute (see
:func:`fsdp_weight_bytes`). The first four terms are exact: they count the tensors raylora's own build
(``raylora.train.model.build``) and its AdamW create, byte for byte. The activation term is a model of
what autograd keeps alive at the peak of a training step; its constants come from tracing the saved
tensors of Qwen3-VL layers (transformers 5, PEFT LoRA) and are listed on :func:`activation_bytes`.
Against the tensors autograd actually saves for a small random Qwen3-VL in bfloat16 (SDPA and eager; LoRA
on llm, vision or projector; no checkpointing) the model is within 5%; in float32 it over-counts by up to
20% (the upcast copies it counts are no-ops there). Allocator fragmentation, the CUDA context and the
kernels' workspaces are not counted: :func:`fits` keeps a headroom for them.

Importing this module is cheap: torch and transformers are imported inside the functions that need them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import quantization as quantization_lib

if TYPE_CHECKING:
    from ..spec import Spec

GIB = 2**30
DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}

# PEFT 0.21's get_peft_model(autocast_adapter_dtype=True), the default raylora keeps, upcasts bf16/fp16
# adapters to float32, so LoRA weights, their grads and AdamW's moments are float32 whatever the base dtype.
LORA_DTYPE = "float32"

# Text tokens around one image in a sample (chat template, instruction, answer); the builtin GUI data has
# about 40. Each sample is assumed to hold one image at data.image.max_pixels.
TEXT_TOKENS = 64
# transformers' Qwen2VLImageProcessor default longest_edge, used when neither the spec nor the checkpoint's
# processor config bounds the image area.
DEFAULT_MAX_PIXELS = 28 * 28 * 1280

# Per token of the LM head at the loss: the backward of log_softmax holds its saved float32 output, the
# float32 incoming gradient and the float32 result at once (the float32 logits copy and the model-dtype logits
# of the forward are 4 + 4 + 2 bytes, less).
LOGITS_BYTES_PER_VOCAB = 12
# Float32 bytes per normalized element: Qwen's RMSNorm upcasts its input and keeps that copy for backward.
NORM_BYTES = 4
# Saved elements (× model dtype) per token of one decoder layer besides norms and LoRA: attention keeps q,
# k, v (k and v repeated to the query heads when a padding mask stops SDPA's GQA) and its output: 4 × q_dim;
# the SwiGLU MLP keeps gate, silu(gate) and up: 3 × intermediate.
ATTN_SAVED_Q = 4
MLP_SAVED_I = 3
# Vision block, per patch: LayerNorm inputs 2 × hidden, attention q, k, v, output 4 × hidden, GELU input
# 1 × intermediate (Qwen2.5-VL's gated MLP keeps 3 × intermediate, like the text MLP).
VIS_SAVED_H = 6
VIS_SAVED_I = 1
VIS_SAVED_I_GATED = {"qwen2_5_vl": 3}
# Patch merger (projector and each deepstack merger), per image token: LayerNorm input and GELU input,
# each 4 × vision hidden (the 2 × 2 merged patches): 8 × vision hidden.
MERGER_SAVED_H = 8

_META_CACHE: dict[str, Any] = {}
_META_CACHE_SIZE = 4


@dataclass(frozen=True)
class Estimate:
    """Peak accelerator memory of one trial's worker, in bytes, by term.

    ``details`` holds the inputs and sub-terms behind the numbers (dtype, tokens, activation parts); it is
    informative and takes no part in equality.
    """

    weights_bytes: int
    """Base model: parameters and buffers. Quantized Linear weights at NF4 size (see ``NF4_*``), all other
    parameters (embeddings, norms, biases, lm_head, and for ``nf4-llm-only`` the whole visual tower) in the
    model dtype; buffers (rotary ``inv_freq``) at their own dtype (float32). Tied weights count once."""
    lora_bytes: int
    """LoRA A and B of every resolved module: ``r × (in + out)`` parameters each, in ``LORA_DTYPE``."""
    grads_bytes: int
    """One gradient per LoRA parameter, in its dtype; twice that with DDP (``workers_per_trial > 1``), whose
    gradient buckets hold a second copy (``gradient_as_bucket_view=False``); a 1/workers shard with FSDP."""
    optimizer_bytes: int
    """AdamW ``exp_avg`` + ``exp_avg_sq``: 2 × lora_bytes (with FSDP of the LoRA shard). The scalar ``step``
    lives on the CPU."""
    activations_bytes: int
    """Peak of the tensors autograd keeps for backward plus the largest transient; see
    :func:`activation_bytes`."""
    image_tokens: int
    """LLM tokens per image at ``data.image.max_pixels``: ``max_pixels // (patch × merge)²`` (32 × 32 pixels
    on Qwen3-VL); the vision encoder sees ``merge² = 4`` times as many patches."""
    details: dict = field(default_factory=dict, compare=False)

    @property
    def total_bytes(self) -> int:
        """weights + lora + grads + optimizer + activations."""
        return (
            self.weights_bytes
            + self.lora_bytes
            + self.grads_bytes
            + self.optimizer_bytes
            + self.activations_bytes
        )

    def to_dict(self) -> dict:
        """Plain data: every term, the total and the details."""
        return {
            "weights_bytes": self.weights_bytes,
            "lora_bytes": self.lora_bytes,
            "grads_bytes": self.grads_bytes,
            "optimizer_bytes": self.optimizer_bytes,
            "activations_bytes": self.activations_bytes,
            "total_bytes": self.total_bytes,
            "image_tokens": self.image_tokens,
            "details": dict(self.details),
        }

    def table_rows(self) -> list[tuple[str, str]]:
        """``(term, human size)`` rows, sizes in GiB, ending with the total and the image tokens."""
        rows = [
            ("weights", self.weights_bytes),
            ("lora", self.lora_bytes),
            ("grads", self.grads_bytes),
            ("optimizer", self.optimizer_bytes),
            ("activations", self.activations_bytes),
            ("total", self.total_bytes),
        ]
        out = [(name, _gib(value)) for name, value in rows]
        patches = self.image_tokens * self.details.get("patches_per_image_token", 4)
        out.append(("image tokens", f"{self.image_tokens:,} per image ({patches:,} vision patches)"))
        return out


def _gib(value: int) -> str:
    return f"{value / GIB:.2f} GiB"


# -- entry points ------------------------------------------------------------------------------------


def estimate(spec: Spec, config=None, *, dtype: str | None = None) -> Estimate:
    """Estimate the peak accelerator memory of one worker of a trial of ``spec``.

    ``config`` is a transformers config (default: loaded from ``spec.model.name_or_path``; a builtin is built
    first). ``dtype`` overrides the compute dtype; by default ``model.dtype``, where ``auto`` means bfloat16
    when the trial asks for GPUs (``resources.gpus_per_worker > 0``) and float32 otherwise, as
    ``raylora.model.resolve_dtype`` decides on the worker (a GPU without bfloat16 would get float32).
    Raises ``SpecError`` when the scope or target modules do not resolve on the model.
    """
    from . import model as model_lib
    from . import scopes

    if config is None:
        config = _load_config(spec)
    dtype = dtype or _dtype_name(spec)
    if dtype not in DTYPE_BYTES:
        raise ValueError(f"unknown dtype {dtype!r}; expected one of {', '.join(DTYPE_BYTES)}")
    meta = _meta_model(config)
    model_type = config.model_type
    resolution = model_lib.resolve(spec, meta, model_type)
    weights, weight_details = weight_bytes(meta, model_type, spec.training.quantization, dtype)

    lora = spec.training.lora
    counted = scopes.account(meta, resolution, lora.r)["scopes"]
    lora_params = sum(entry["lora_params"] for entry in counted.values())
    lora_bytes = lora_params * DTYPE_BYTES[LORA_DTYPE]
    workers = spec.resources.workers_per_trial
    ddp_copies = 2 if workers > 1 else 1
    state_bytes = {"lora": lora_bytes, "grads": lora_bytes * ddp_copies, "optimizer": 2 * lora_bytes}
    sharding = {}
    if spec.resources.sharding == "fsdp":
        weights, sharding = fsdp_weight_bytes(
            meta, weight_details, dtype, workers, spec.resources.offload_params, spec.training.quantization
        )
        # LoRA, its gradients and AdamW's moments are sharded like the weights (offloaded: on the host).
        share = 0 if spec.resources.offload_params else -(-lora_bytes // workers)
        state_bytes = {"lora": share, "grads": share, "optimizer": 2 * share}

    max_pixels, pixels_from = _max_pixels(spec)
    acts = activation_bytes(spec, config, meta, resolution, dtype, max_pixels)
    details = {
        "dtype": dtype,
        "model_type": model_type,
        "quantization": spec.training.quantization,
        **weight_details,
        "lora_params": lora_params,
        "lora_params_by_part": {part: entry["lora_params"] for part, entry in counted.items()},
        "max_pixels": max_pixels,
        "max_pixels_from": pixels_from,
        "workers_per_trial": workers,
        "sharding": spec.resources.sharding,
        **sharding,
        **{k: v for k, v in acts.items() if k not in ("total", "image_tokens")},
    }
    return Estimate(
        weights_bytes=weights,
        lora_bytes=state_bytes["lora"],
        grads_bytes=state_bytes["grads"],
        optimizer_bytes=state_bytes["optimizer"],
        activations_bytes=acts["total"],
        image_tokens=acts["image_tokens"],
        details=details,
    )


def by_workers(spec: Spec, counts=(1, 2, 4, 8), config=None) -> list[tuple[str, Estimate]]:
    """For a ``sharding: fsdp`` spec, the per-worker estimate with the trial on each number of workers in
    ``counts`` (one worker: the whole model, no sharding); otherwise nothing."""
    if spec.resources.sharding != "fsdp":
        return []
    config = config if config is not None else _load_config(spec)
    rows = []
    for n in counts:
        values = {"resources.workers_per_trial": n, "resources.sharding": "fsdp" if n > 1 else "none"}
        if n == 1:
            values["resources.offload_params"] = False
        label = f"{n} worker{'s' if n > 1 else ''}" + (" (fsdp)" if n > 1 else " (whole model)")
        rows.append((label, estimate(spec.with_values(values), config)))
    return rows


def estimate_values(spec: Spec, values: dict, config, *, dtype: str | None = None) -> Estimate:
    """:func:`estimate` for one sampled trial: ``spec.with_values(values)`` (dotted path → value)."""
    return estimate(spec.with_values(values), config, dtype=dtype)


def fits(estimate: Estimate, gpu_memory_gb: float, headroom: float = 0.9) -> bool:
    """Whether the estimate fits in ``headroom`` of a GPU's memory.

    ``gpu_memory_gb`` is read as GiB (2**30 bytes), the unit ``nvidia-smi`` and ``torch.cuda`` report (an
    "80 GB" A100 has 80 GiB). The remaining ``1 - headroom`` covers the CUDA context, allocator fragmentation
    and kernel workspaces, which the estimate leaves out.
    """
    return estimate.total_bytes <= headroom * gpu_memory_gb * GIB


# -- weights -----------------------------------------------------------------------------------------


def weight_bytes(meta, model_type: str, quantization: str, dtype: str) -> tuple[int, dict]:
    """Base model bytes on the accelerator and their breakdown.

    ``param_bytes`` counts unquantized parameters at ``numel × dtype bytes``; ``quantized_bytes`` the
    NF4 weights (``quantization.nf4_weight_bytes`` each); ``buffer_bytes`` the buffers at their own
    dtype. Every parameter counts once, however many modules share it.
    """
    size = DTYPE_BYTES[dtype]
    quantized = quantization_lib.quantized_modules(meta, model_type, quantization)
    seen: set[int] = set()
    params = quant = buffers = quant_params = 0
    for name, module in meta.named_modules():
        for leaf, param in module.named_parameters(recurse=False):
            if id(param) in seen:
                continue
            seen.add(id(param))
            if name in quantized and leaf == "weight":
                quant += quantization_lib.nf4_weight_bytes(param.numel(), size)
                quant_params += param.numel()
            else:
                params += param.numel() * size
        for buffer in module.buffers(recurse=False):
            if id(buffer) not in seen:
                seen.add(id(buffer))
                buffers += buffer.numel() * buffer.element_size()
    details = {
        "param_bytes": params,
        "quantized_bytes": quant,
        "quantized_params": quant_params,
        "quantized_modules": len(quantized),
        "buffer_bytes": buffers,
    }
    return params + quant + buffers, details


def fsdp_weight_bytes(
    meta, details: dict, dtype: str, workers: int, offload: bool, quantization: str = "none"
) -> tuple[int, dict]:
    """One FSDP worker's base-model bytes on the accelerator, and their breakdown.

    ``sharded``: its 1/workers of every parameter (all of them are sharded; on the host when ``offload``).
    ``gathered``: what is whole at the peak of a step: the root unit (embeddings, ``lm_head``, final norms,
    patch embedding and mergers: every parameter outside a decoder layer or vision block), which FSDP2 keeps
    gathered from the forward through the backward, plus two blocks (the one computing and the one prefetched,
    the largest block counted twice). Buffers are replicated on every worker.
    """
    from .sharding import blocks

    size = DTYPE_BYTES[dtype]
    quantized = quantization_lib.quantized_modules(meta, meta.config.model_type, quantization)
    names = {id(module): name for name, module in meta.named_modules()}
    units = []
    for block in blocks(meta):
        prefix = names[id(block)]
        total = 0
        for name, module in block.named_modules():
            for leaf, param in module.named_parameters(recurse=False):
                full = f"{prefix}.{name}" if name else prefix
                four_bit = full in quantized and leaf == "weight"
                total += (
                    quantization_lib.nf4_weight_bytes(param.numel(), size)
                    if four_bit
                    else param.numel() * size
                )
        units.append(total)
    params = details["param_bytes"] + details["quantized_bytes"]
    root = params - sum(units)
    largest = max(units, default=0)
    sharded = -(-params // workers)
    gathered = root + 2 * largest
    on_device = (0 if offload else sharded) + gathered + details["buffer_bytes"]
    return on_device, {
        "fsdp_sharded_bytes": sharded,
        "fsdp_gathered_bytes": gathered,
        "fsdp_root_bytes": root,
        "fsdp_largest_block_bytes": largest,
        "fsdp_offloaded": offload,
    }


# -- activations -------------------------------------------------------------------------------------


def activation_bytes(spec: Spec, config, meta, resolution, dtype: str, max_pixels: int) -> dict:
    """A model of the activation memory at the peak of one training step (one worker, one micro-batch).

    Symbols: ``B`` per-device batch, ``b`` model-dtype bytes, ``l = 4`` LoRA dtype bytes; text: ``h`` hidden,
    ``q`` = heads × head_dim, ``k`` = kv heads × head_dim, ``i`` intermediate, ``L`` layers, ``V`` vocab,
    ``n`` heads; vision: ``hv``, ``iv``, ``D`` depth, ``nv`` heads. Per sample: ``I = max_pixels //
    (patch×merge)²`` image tokens, ``T = min(max_length, I + TEXT_TOKENS)`` tokens (a longer sample is
    dropped, never truncated, so ``T <= max_length``), ``P = 4 × min(I, max_length - TEXT_TOKENS)`` vision
    patches.

    LoRA, per targeted module and token: ``in × (l + m) + r × l`` (the float32 dropout output or input cast
    that lora_A keeps, the 1-byte dropout mask ``m`` when dropout > 0, and lora_A's output).

    Text decoder layer, per token (``a_L``, bytes)::

        4·(2h + q + k)         float32 RMSNorm inputs (input, post-attention, q_norm, k_norm)
        + b·(4q + 3i)          attention q, k, v, output; MLP gate, silu(gate), up
        + LoRA of the layer
        eager attention adds n·T·(4 + b) per token (float32 softmax and its model-dtype copy; 4 in float32)

    Text peak: with checkpointing ``B·T·(L·h·b) + max(logits, B·T·a_L)`` (the saved layer inputs plus the
    larger of the loss and one recomputed layer); without ``B·T·L·a_L + logits``. ``logits =
    B·T·(12·V + 4h)``: log_softmax's backward holds three float32 B×T×V tensors.

    Vision, only when LoRA trains the visual tower (otherwise autograd keeps nothing there); per patch and
    block ``a_V = b·(6hv + 1·iv) + LoRA`` (+ ``nv·P·(4 + b)`` eager); saved ``B·P·D·hv·b + B·P·a_V`` with
    checkpointing, ``B·P·D·a_V`` without. Mergers (projector and deepstack) add ``B·I·8hv·b`` each (+ their
    LoRA) once any visual part trains. The vision forward's transient is one block on all patches, plus one
    image's eager scores ``nv·P²·(2b + 4)``.

    Peak = vision saved + max(vision transient, text peak). Small terms (masks, rotary tables,
    activation-gradient temporaries, the dequantized weight of one 4-bit Linear) are left out. Returns the
    parts and ``total``.
    """
    b = DTYPE_BYTES[dtype]
    lb = DTYPE_BYTES[LORA_DTYPE]
    eager = spec.model.attn_implementation == "eager"
    ckpt = spec.training.gradient_checkpointing
    batch = spec.training.per_device_train_batch_size
    lora = spec.training.lora
    mask = 1 if lora.dropout > 0 else 0
    max_length = spec.data.max_length
    text, vision = config.text_config, config.vision_config
    model_type = config.model_type

    merge = vision.spatial_merge_size**2
    image_tokens = max_pixels // (vision.patch_size * vision.spatial_merge_size) ** 2
    used_tokens = max(0, min(image_tokens, max_length - TEXT_TOKENS))
    tokens = min(max_length, image_tokens + TEXT_TOKENS)
    patches = used_tokens * merge

    # LoRA bytes per token, by part: every targeted module keeps its input (in) and lora_A's output (r).
    lora_per_token = dict.fromkeys(("llm", "vision", "projector", "deepstack"), 0)
    for name, part in resolution.modules.items():
        module = meta.get_submodule(name)
        lora_per_token[part] += module.in_features * (lb + mask) + lora.r * lb

    # -- text decoder
    h, layers, vocab = text.hidden_size, text.num_hidden_layers, text.vocab_size
    head_dim = getattr(text, "head_dim", None) or h // text.num_attention_heads
    q_dim = text.num_attention_heads * head_dim
    kv_dim = text.num_key_value_heads * head_dim
    inter = _text_intermediate(text)
    qk_norm = 0 if model_type == "qwen2_5_vl" else q_dim + kv_dim
    per_layer = NORM_BYTES * (2 * h + qk_norm) + b * (ATTN_SAVED_Q * q_dim + MLP_SAVED_I * inter)
    per_layer += lora_per_token["llm"] // layers
    if eager:
        per_layer += text.num_attention_heads * tokens * (4 + (b if b != 4 else 0))
    bt = batch * tokens
    logits = bt * (LOGITS_BYTES_PER_VOCAB * vocab + NORM_BYTES * h)
    if ckpt:
        text_saved = bt * layers * h * b
        text_peak = text_saved + max(logits, bt * per_layer)
    else:
        text_saved = bt * layers * per_layer
        text_peak = text_saved + logits

    # -- vision tower
    hv, iv, depth = vision.hidden_size, vision.intermediate_size, vision.depth
    heads_v = vision.num_heads
    deepstack = len(getattr(vision, "deepstack_visual_indexes", None) or [])
    per_patch = b * (VIS_SAVED_H * hv + VIS_SAVED_I_GATED.get(model_type, VIS_SAVED_I) * iv)
    scores = heads_v * patches * patches * (2 * b + 4) if eager else 0
    parts = set(resolution.modules.values())
    vision_saved = 0
    if "vision" in parts:
        trained = per_patch + lora_per_token["vision"] // depth
        if eager:
            trained += heads_v * patches * (4 + (b if b != 4 else 0))
        blocks = batch * patches * (depth * hv * b + trained) if ckpt else batch * patches * depth * trained
        vision_saved += blocks
    if parts & {"vision", "projector", "deepstack"}:
        mergers = (1 + deepstack) * MERGER_SAVED_H * hv * b
        lora_mergers = lora_per_token["projector"] + lora_per_token["deepstack"]
        vision_saved += batch * used_tokens * (mergers + lora_mergers)
    vision_transient = batch * patches * per_patch + scores

    total = vision_saved + max(vision_transient, text_peak)
    return {
        "total": total,
        "image_tokens": image_tokens,
        "patches_per_image_token": merge,
        "tokens_per_sample": tokens,
        "image_tokens_used": used_tokens,
        "vision_patches_per_image": patches,
        "text_saved_bytes": text_saved,
        "text_peak_bytes": text_peak,
        "logits_bytes": logits,
        "text_layer_bytes_per_token": per_layer,
        "vision_saved_bytes": vision_saved,
        "vision_transient_bytes": vision_transient,
    }


def _text_intermediate(text) -> int:
    # An MoE layer runs num_experts_per_tok experts of moe_intermediate_size for every token.
    experts = getattr(text, "num_experts_per_tok", None)
    moe = getattr(text, "moe_intermediate_size", None)
    if experts and moe:
        return experts * moe
    return text.intermediate_size


# -- inputs ------------------------------------------------------------------------------------------


def _dtype_name(spec: Spec) -> str:
    if spec.model.dtype == "auto":
        return "bfloat16" if spec.resources.gpus_per_worker > 0 else "float32"
    return spec.model.dtype


def _load_config(spec: Spec):
    from .. import builtin
    from . import scopes

    return scopes.load_config(builtin.resolve_model(spec.model.name_or_path))


def _meta_model(config):
    # Building the meta model is the slow part (seconds for a 4B config); a study estimates many trials of
    # one config, so keep the few last ones.
    from . import scopes

    key = config.to_json_string(use_diff=False)
    meta = _META_CACHE.pop(key, None)
    if meta is None:
        meta = scopes.meta_model(config)
    _META_CACHE[key] = meta
    while len(_META_CACHE) > _META_CACHE_SIZE:
        _META_CACHE.pop(next(iter(_META_CACHE)))
    return meta


def _max_pixels(spec: Spec) -> tuple[int, str]:
    """``data.image.max_pixels``, else the checkpoint's processor bound, else ``DEFAULT_MAX_PIXELS``."""
    if spec.data.image.max_pixels:
        return spec.data.image.max_pixels, "data.image.max_pixels"
    from .. import builtin

    ref = spec.model.name_or_path
    if builtin.is_builtin(ref):
        return builtin.MAX_PIXELS, ref
    for path in _processor_files(ref, spec.model.revision):
        found = _longest_edge(path)
        if found:
            return found, str(path)
    return DEFAULT_MAX_PIXELS, "transformers default"


def _processor_files(ref: str, revision: str | None) -> list[Path]:
    names = ("preprocessor_config.json", "processor_config.json")
    folder = Path(ref).expanduser()
    if folder.is_file():  # a config.json given as the model
        folder = folder.parent
    if folder.is_dir():
        return [folder / name for name in names if (folder / name).is_file()]
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return []
    found = []
    for name in names:
        try:
            cached = try_to_load_from_cache(ref, name, revision=revision)
        except Exception:  # a malformed repo id or a broken cache is only a missed hint here
            cached = None
        if isinstance(cached, str):
            found.append(Path(cached))
    return found


def _longest_edge(path: Path) -> int | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    data = data.get("image_processor", data)
    size = data.get("size") or {}
    value = size.get("longest_edge") or size.get("max_pixels") or data.get("max_pixels")
    return int(value) if value else None
