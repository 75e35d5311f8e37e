"""The memory estimator: exact parameter, gradient and optimizer bytes against a real raylora model."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from raylora import builtin
from raylora import spec as spec_lib
from raylora.errors import SpecError
from raylora.train import estimate, scopes
from raylora.train import model as model_lib
from raylora.train import quantization as quantization_lib

CONFIGS = Path(__file__).resolve().parent / "configs"
QWEN3_VL_4B_PARAMS = 4_437_815_808
QWEN3_VL_4B_LLM_LORA_R16 = 33_030_144
# model.visual.rotary_pos_emb and model.language_model.rotary_emb: inv_freq and original_inv_freq, float32.
QWEN3_VL_4B_BUFFER_BYTES = (16 + 16 + 64 + 64) * 4


def _nbytes(tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


@pytest.fixture(scope="module")
def tiny_path() -> str:
    return str(builtin.ensure_tiny_model())


@pytest.fixture(scope="module")
def tiny_batch(tiny_path):
    """Two samples, each a 64×64 image (16 patches, 4 image tokens) inside some text; no processor needed."""
    config = scopes.load_config(tiny_path)
    grid, text = (1, 4, 4), 24
    image = grid[1] * grid[2] // config.vision_config.spatial_merge_size**2
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(20, 1000, (2, text + image + 2), generator=generator)
    ids[:, 0], ids[:, 1 + image] = config.vision_start_token_id, config.vision_end_token_id
    ids[:, 1 : 1 + image] = config.image_token_id
    patch = 3 * config.vision_config.temporal_patch_size * config.vision_config.patch_size**2
    return {
        "input_ids": ids,
        "attention_mask": torch.ones_like(ids),
        "labels": ids.clone(),
        "mm_token_type_ids": (ids == config.image_token_id).long(),
        "pixel_values": torch.randn(2 * grid[1] * grid[2], patch, generator=generator),
        "image_grid_thw": torch.tensor([grid, grid]),
    }


def _train_one_step(spec, path, batch):
    """Build the model exactly as raylora does and take one AdamW step (train_loop's lines)."""
    built = model_lib.build(spec, path, torch.device("cpu"))
    model = built.model
    model.train()
    groups = model_lib.param_groups(model, built.model_type, spec)
    optimizer = torch.optim.AdamW(groups, betas=(0.9, 0.999), eps=1e-8)
    loss = model(**batch, use_cache=False).loss
    loss.backward()
    optimizer.step()
    return model, optimizer


@pytest.mark.parametrize(
    "scope, r, dtype",
    [
        (["llm"], 8, "auto"),
        (["llm"], 16, "auto"),
        (["llm", "vision"], 8, "auto"),
        (["llm", "vision"], 16, "auto"),
        (["llm", "vision"], 8, "bfloat16"),  # LoRA stays float32 on a bf16 base: PEFT's autocast default
    ],
)
def test_exact_bytes_against_a_real_step(tiny_path, tiny_batch, scope, r, dtype):
    spec = spec_lib.build(
        {
            "model": {"dtype": dtype},
            "training": {"lora": {"r": r, "scope": scope}},
        }
    )
    est = estimate.estimate(spec)
    model, optimizer = _train_one_step(spec, tiny_path, tiny_batch)

    trainable = [p for p in model.parameters() if p.requires_grad]
    assert all("lora_" in n for n, p in model.named_parameters() if p.requires_grad)
    assert all(p.grad is not None for p in trainable)
    frozen = [p for p in model.parameters() if not p.requires_grad]
    state = [v for s in optimizer.state.values() for k, v in s.items() if k != "step"]
    assert len(state) == 2 * len(trainable)

    assert est.lora_bytes == _nbytes(trainable)
    assert est.grads_bytes == _nbytes(p.grad for p in trainable)
    assert est.optimizer_bytes == _nbytes(state)
    assert est.weights_bytes == _nbytes(frozen) + _nbytes(model.buffers())
    assert {p.dtype for p in trainable} == {torch.float32}


@pytest.mark.parametrize(
    "quantization, dtype", [("nf4", "auto"), ("nf4", "bfloat16"), ("nf4-llm-only", "auto")]
)
def test_nf4_weights_match_the_real_4bit_model(tiny_path, quantization, dtype):
    import bitsandbytes as bnb

    spec = spec_lib.build(
        {
            "model": {"dtype": dtype},
            "training": {"quantization": quantization, "lora": {"scope": ["llm", "vision"]}},
        }
    )
    est = estimate.estimate(spec)
    model = model_lib.build(spec, tiny_path, torch.device("cpu")).model

    linear4 = {n: m for n, m in model.named_modules() if isinstance(m, bnb.nn.Linear4bit)}
    names = {n.removeprefix("base_model.model.").removesuffix(".base_layer") for n in linear4}
    meta = scopes.meta_model(scopes.load_config(tiny_path))
    assert names == quantization_lib.quantized_modules(meta, "qwen3_vl", quantization)

    frozen = [p for p in model.parameters() if not p.requires_grad]
    states: dict[int, torch.Tensor] = {}
    for module in linear4.values():
        qs = module.weight.quant_state
        for t in (qs.absmax, qs.code, qs.offset, qs.state2.absmax, qs.state2.code):
            states[t.untyped_storage().data_ptr()] = t
    real = _nbytes(frozen) + _nbytes(model.buffers()) + _nbytes(states.values())
    assert abs(est.weights_bytes - real) <= 0.05 * real
    # Tighter: only the per-layer copy of the 256-entry nested-absmax map may be shared by another
    # bitsandbytes build (on this one, on CPU, the estimate is exact).
    assert abs(est.weights_bytes - real) <= 256 * 4 * len(linear4)
    unquantized = spec_lib.build(
        {"model": {"dtype": dtype}, "training": {"lora": {"scope": ["llm", "vision"]}}}
    )
    assert est.weights_bytes < estimate.estimate(unquantized).weights_bytes
    assert est.lora_bytes == _nbytes(p for p in model.parameters() if p.requires_grad)


# -- Qwen3-VL-4B, config only ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def config_4b():
    return scopes.load_config(str(CONFIGS / "qwen3_vl_4b.json"))


def _spec_4b(quantization="none", batch=1, max_pixels=1024 * 1024, checkpointing=True, r=16, scope=("llm",)):
    return spec_lib.build(
        {
            "model": {"name_or_path": str(CONFIGS / "qwen3_vl_4b.json"), "dtype": "bfloat16"},
            "data": {"image": {"max_pixels": max_pixels}},
            "training": {
                "quantization": quantization,
                "per_device_train_batch_size": batch,
                "gradient_checkpointing": checkpointing,
                "lora": {"r": r, "scope": list(scope)},
            },
        }
    )


def test_4b_parameter_terms_are_exact(config_4b):
    est = estimate.estimate(_spec_4b(), config_4b)
    assert est.details["param_bytes"] == QWEN3_VL_4B_PARAMS * 2
    assert est.weights_bytes == QWEN3_VL_4B_PARAMS * 2 + QWEN3_VL_4B_BUFFER_BYTES
    assert est.lora_bytes == QWEN3_VL_4B_LLM_LORA_R16 * 4
    assert est.grads_bytes == est.lora_bytes
    assert est.optimizer_bytes == 2 * est.lora_bytes
    assert est.image_tokens == 1024 and est.details["vision_patches_per_image"] == 4096
    assert est.total_bytes == sum(
        v for k, v in est.to_dict().items() if k.endswith("_bytes") and k != "total_bytes"
    )


def test_4b_nf4_is_much_smaller(config_4b):
    none = estimate.estimate(_spec_4b(), config_4b)
    nf4 = estimate.estimate(_spec_4b("nf4"), config_4b)
    llm_only = estimate.estimate(_spec_4b("nf4-llm-only"), config_4b)
    assert nf4.details["quantized_modules"] == 252 + 96 + 2 + 6  # llm, vision, projector, deepstack Linears
    assert llm_only.details["quantized_modules"] == 252
    assert nf4.weights_bytes < 0.35 * none.weights_bytes
    assert nf4.weights_bytes < llm_only.weights_bytes < none.weights_bytes
    assert nf4.lora_bytes == none.lora_bytes and nf4.activations_bytes == none.activations_bytes


def test_4b_activations_are_monotonic(config_4b):
    def acts(**kw) -> int:
        return estimate.estimate(_spec_4b(**kw), config_4b).activations_bytes

    by_batch = [acts(batch=b) for b in (1, 2, 4)]
    assert by_batch == sorted(set(by_batch))
    by_pixels = [acts(max_pixels=p * p) for p in (256, 512, 1024)]
    assert by_pixels == sorted(set(by_pixels))
    vision = [acts(max_pixels=p * p, scope=("llm", "vision")) for p in (256, 512, 1024)]
    assert vision == sorted(set(vision)) and vision[0] > by_pixels[0]
    assert acts(checkpointing=True) < acts(checkpointing=False)
    assert acts(scope=("llm", "vision"), checkpointing=True) < acts(
        scope=("llm", "vision"), checkpointing=False
    )


def test_fits_and_sampled_values(config_4b):
    spec = _spec_4b()
    est = estimate.estimate(spec, config_4b)
    assert estimate.fits(est, 80) and not estimate.fits(est, 8)
    assert estimate.fits(estimate.estimate(_spec_4b("nf4"), config_4b), 8)
    assert not estimate.fits(est, est.total_bytes / estimate.GIB, headroom=0.99)

    r32 = estimate.estimate_values(spec, {"training.lora.r": 32}, config_4b)
    assert r32.lora_bytes == 2 * est.lora_bytes and r32.weights_bytes == est.weights_bytes
    rows = dict(est.table_rows())
    assert rows["total"].endswith(" GiB") and set(rows) >= {"weights", "lora", "activations", "total"}


def test_unknown_target_module_is_a_spec_error(config_4b):
    spec = spec_lib.build({"training": {"lora": {"target_modules": ["nope_proj"]}}})
    with pytest.raises(SpecError, match="training.lora.target_modules"):
        estimate.estimate(spec, config_4b)


def test_fsdp_shards_weights_lora_and_optimizer_across_workers():
    config = scopes.load_config(str(CONFIGS / "qwen3-vl-32b"))
    data = {
        "model": {"name_or_path": str(CONFIGS / "qwen3-vl-32b"), "dtype": "bfloat16"},
        "data": {"image": {"max_pixels": 1003520}},
        "resources": {"workers_per_trial": 8, "gpus_per_worker": 1, "sharding": "fsdp"},
    }
    rows = dict(estimate.by_workers(spec_lib.build(data), config=config))
    assert list(rows) == [
        "1 worker (whole model)",
        "2 workers (fsdp)",
        "4 workers (fsdp)",
        "8 workers (fsdp)",
    ]
    whole, eight = rows["1 worker (whole model)"], rows["8 workers (fsdp)"]
    assert whole.weights_bytes > 60 * estimate.GIB > 4 * eight.weights_bytes
    totals = [est.total_bytes for est in rows.values()]
    assert totals == sorted(totals, reverse=True) and len(set(totals)) == 4
    d = eight.details
    assert d["fsdp_sharded_bytes"] == -(-whole.details["param_bytes"] // 8)
    assert eight.weights_bytes == d["fsdp_sharded_bytes"] + d["fsdp_gathered_bytes"] + d["buffer_bytes"]
    # Embeddings and lm_head (151936 × 5120 each, bf16) stay gathered in the root unit.
    assert d["fsdp_root_bytes"] >= 2 * 151936 * 5120 * 2
    assert eight.lora_bytes == -(-whole.lora_bytes // 8) and eight.grads_bytes == eight.lora_bytes
    assert eight.optimizer_bytes == 2 * eight.lora_bytes
    assert eight.activations_bytes == whole.activations_bytes
    offloaded = estimate.estimate(
        spec_lib.build({**data, "resources": {**data["resources"], "offload_params": True}}), config
    )
    assert (
        offloaded.weights_bytes == d["fsdp_gathered_bytes"] + d["buffer_bytes"]
        and offloaded.optimizer_bytes == 0
    )
    # 4-bit blocks are gathered at their packed size; in the root unit only the mergers' Linears are 4-bit.
    nf4 = estimate.estimate(spec_lib.build({**data, "training": {"quantization": "nf4"}}), config).details
    assert 2 * 151936 * 5120 * 2 <= nf4["fsdp_root_bytes"] < d["fsdp_root_bytes"]
    assert nf4["fsdp_largest_block_bytes"] < d["fsdp_largest_block_bytes"] / 3
