"""FSDP2 sharding of one trial's model across its workers (``resources.sharding: fsdp``).

    rank 0:       from_pretrained on the host ─┐
    other ranks:  the same model on meta ──────┴─ LoRA ─ fully_shard(each decoder and vision block, root)
                  ─ allocate local shards ─ rank 0's weights broadcast, each rank keeps only its shard

Only rank 0 ever holds the whole checkpoint, in host memory, while the shards are broadcast; the other
workers never hold more than their shard plus one tensor in flight. Each decoder layer and vision block
(the model's ``_no_split_modules``) is its own FSDP unit; the root unit holds embeddings, norms, mergers
and ``lm_head``. The root is the transformers model, not the PEFT wrapper, so ``generate`` (which calls the
transformers model's forward) gathers parameters the same way training does.

Mixed precision follows the model's dtype: parameters are gathered and computed in it (bfloat16 on GPUs)
while the sharded masters keep their own dtype, so LoRA weights, their gradients and AdamW's moments stay
float32 (PEFT upcasts adapters); gradients are reduced in float32. On CPU ``dtype: auto`` is float32 and
nothing is cast: a CPU trial is a correctness run, and float32 there matches DDP step for step.

Adapter checkpoints keep the DDP format: rank 0 writes the gathered LoRA weights with PEFT's
``save_pretrained`` (vanilla ``PeftModel.from_pretrained`` loads them) and the gathered optimizer state;
on resume every rank reads them and keeps its shard. Gathering is a collective: every rank calls
:func:`gather_state` and only rank 0 gets the tensors.

4-bit (``nf4``, ``nf4-llm-only``): the packed weights are stored in the model dtype
(``bnb_4bit_quant_storage``, see :mod:`.quantization`), so FSDP2 shards and gathers them like any other
tensor; the gathered tensor is a plain one, and bitsandbytes' ``Linear4bit`` (0.50) restores its
quantization state from the copy it keeps on the module. Every rank loads and quantizes the checkpoint
itself (a whole 4-bit copy per worker while loading); only the LoRA initialisation is broadcast.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

    from ..spec import Spec

FSDP = "fsdp"


def is_sharded(spec: Spec) -> bool:
    """Whether this trial's model is sharded across its workers (a process group is running)."""
    import torch.distributed as dist

    return spec.resources.sharding == FSDP and dist.is_available() and dist.is_initialized()


def loads_on_meta(spec: Spec) -> bool:
    """Whether this worker builds the model without weights (every sharded rank but 0)."""
    import torch.distributed as dist

    # A 4-bit model is loaded (and quantized) by every rank: bitsandbytes' parameters are no plain tensors
    # to broadcast, and at a quarter of the bytes a whole copy per worker is what QLoRA-FSDP recipes hold.
    quantized = spec.training.quantization != "none"
    return is_sharded(spec) and not quantized and dist.get_rank() != 0


def empty_model(config, spec: Spec, path: str, dtype):
    """The model ``from_pretrained`` would build, on the meta device: no weights, no memory."""
    import torch
    from transformers import AutoModelForImageTextToText, GenerationConfig

    with torch.device("meta"):
        model = AutoModelForImageTextToText.from_config(
            config,
            dtype=dtype,
            attn_implementation=spec.model.attn_implementation,
            trust_remote_code=spec.model.trust_remote_code,
        )
    try:  # the same generation settings as rank 0, so every rank decodes the same number of steps
        model.generation_config = GenerationConfig.from_pretrained(path, revision=spec.model.revision)
    except OSError:
        pass
    return model


def blocks(model) -> list:
    """The modules that become FSDP units of their own: language decoder layers and vision blocks."""
    names = set(getattr(model, "_no_split_modules", None) or ())
    return [module for module in model.modules() if type(module).__name__ in names]


def shard(peft_model, spec: Spec, device: torch.device, dtype):
    """Shard ``peft_model`` (rank 0: real weights; others: meta) across the process group, in place."""
    import torch
    import torch.distributed as dist
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import CPUOffloadPolicy, MixedPrecisionPolicy, OffloadPolicy, fully_shard

    rank = dist.get_rank()
    quantized = spec.training.quantization != "none"
    full = {k: v.detach() for k, v in peft_model.state_dict().items()} if rank == 0 and not quantized else {}
    if quantized:  # every rank quantized the same checkpoint; the random LoRA initialisation is rank 0's
        for param in peft_model.parameters():
            if param.requires_grad:
                dist.broadcast(param.data, src=0)
    mesh = init_device_mesh(device.type, (dist.get_world_size(),))
    cast = None if dtype == torch.float32 else dtype
    offload = spec.resources.offload_params
    options = {
        "mesh": mesh,
        "mp_policy": MixedPrecisionPolicy(param_dtype=cast, reduce_dtype=torch.float32),
        # Pinned host memory needs a CUDA driver; on CPU the shards are host memory already.
        "offload_policy": CPUOffloadPolicy(pin_memory=device.type == "cuda") if offload else OffloadPolicy(),
    }
    base = peft_model.get_base_model()
    for block in blocks(base):
        fully_shard(block, **options)
    fully_shard(base, **options)
    if not quantized:
        if rank != 0:
            peft_model.to_empty(device="cpu" if offload else device)
        set_model_state_dict(
            peft_model, full, options=StateDictOptions(full_state_dict=True, broadcast_from_rank0=True)
        )
        del full
    for buffer in peft_model.buffers():  # non-persistent buffers (rotary inv_freq) are in no state dict
        dist.broadcast(buffer, src=0)
    return peft_model


def gather_state(peft_model, optimizer) -> tuple[dict | None, dict | None]:
    """Rank 0: the full LoRA weights (by parameter name) and optimizer state; other ranks: ``(None, None)``.

    A collective: every rank must call it.
    """
    import torch.distributed as dist
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

    rank = dist.get_rank()
    weights = {}
    for name, param in peft_model.named_parameters():
        if param.requires_grad:
            full = param.full_tensor() if hasattr(param, "full_tensor") else param
            if rank == 0:
                weights[name] = full.detach().cpu()
    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    state = get_optimizer_state_dict(peft_model, optimizer, options=options)
    return (weights, state) if rank == 0 else (None, None)


def load_state(peft_model, optimizer, weights: dict, optimizer_state: dict) -> None:
    """Every rank: keep its shard of a checkpoint's full adapter weights (PEFT's saved names) and optimizer
    state."""
    import torch
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict
    from torch.distributed.tensor import DTensor, distribute_tensor

    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if not param.requires_grad:
                continue
            key = name.replace(f".{peft_model.active_adapter}.", ".")  # PEFT saves without the adapter name
            full = weights[key].to(param.dtype)
            if isinstance(param, DTensor):
                local = distribute_tensor(full, param.device_mesh, param.placements, src_data_rank=None)
                param.to_local().copy_(local.to_local())
            else:
                param.copy_(full)
    set_optimizer_state_dict(
        peft_model, optimizer, optimizer_state, options=StateDictOptions(full_state_dict=True)
    )
