"""Scope resolution, PEFT target equivalence and parameter accounting (config only, no weights)."""

from __future__ import annotations

from pathlib import Path

import pytest

from raylora.train import scopes as sc
from raylora.train.scopes import (
    PARTS,
    SCOPES,
    Resolution,
    ScopeError,
    account,
    inspect,
    load_config,
    lora_params,
    meta_model,
    part_of,
    resolve_scopes,
    resolve_target_modules,
)

CONFIGS = Path(__file__).parent / "configs"
SEED_LIST = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]

LLM = "model.language_model.layers"
VIS = "model.visual.blocks"


def _expand(prefix: str, count: int, leaves: list[str]) -> set[str]:
    return {f"{prefix}.{i}.{leaf}" for i in range(count) for leaf in leaves}


# Tiny fixtures: 2 text layers, 3 vision blocks (Qwen3) / 2 (Qwen2.5), deepstack at blocks 1 and 2.
LLM_ATTN = _expand(LLM, 2, ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj"])
LLM_MLP = _expand(LLM, 2, ["mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"])
Q3_VIS_ATTN = _expand(VIS, 3, ["attn.qkv", "attn.proj"])
Q3_VIS_MLP = _expand(VIS, 3, ["mlp.linear_fc1", "mlp.linear_fc2"])
Q3_PROJ = {"model.visual.merger.linear_fc1", "model.visual.merger.linear_fc2"}
Q3_DEEP = _expand("model.visual.deepstack_merger_list", 2, ["linear_fc1", "linear_fc2"])
Q25_VIS_ATTN = _expand(VIS, 2, ["attn.qkv", "attn.proj"])
Q25_VIS_MLP = _expand(VIS, 2, ["mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"])
Q25_PROJ = {"model.visual.merger.mlp.0", "model.visual.merger.mlp.2"}

EXPECTED = {
    "qwen3_vl": {
        "llm": LLM_ATTN | LLM_MLP,
        "llm.attn": LLM_ATTN,
        "llm.mlp": LLM_MLP,
        "vision": Q3_VIS_ATTN | Q3_VIS_MLP,
        "vision.attn": Q3_VIS_ATTN,
        "vision.mlp": Q3_VIS_MLP,
        "projector": Q3_PROJ,
        "deepstack": Q3_DEEP,
    },
    "qwen2_5_vl": {
        "llm": LLM_ATTN | LLM_MLP,
        "llm.attn": LLM_ATTN,
        "llm.mlp": LLM_MLP,
        "vision": Q25_VIS_ATTN | Q25_VIS_MLP,
        "vision.attn": Q25_VIS_ATTN,
        "vision.mlp": Q25_VIS_MLP,
        "projector": Q25_PROJ,
    },
}


@pytest.fixture(scope="module")
def tiny():
    """Meta-device models for the tiny fixtures, keyed by model_type."""
    models = {}
    for stem in ("qwen3_vl_tiny", "qwen2_5_vl_tiny", "qwen3_vl_moe_tiny"):
        config = load_config(str(CONFIGS / f"{stem}.json"))
        models[config.model_type] = meta_model(config)
    return models


@pytest.fixture(scope="module")
def inspected_4b():
    return inspect(str(CONFIGS / "qwen3_vl_4b.json"), r=16)


def test_vocabulary_is_closed_and_ordered():
    assert SCOPES == (
        "llm",
        "llm.attn",
        "llm.mlp",
        "vision",
        "vision.attn",
        "vision.mlp",
        "projector",
        "deepstack",
    )
    assert PARTS == ("llm", "vision", "projector", "deepstack")
    assert set(sc.supported_model_types()) == {"qwen3_vl", "qwen3_vl_moe", "qwen2_5_vl"}


def test_qwen3_vl_4b_ground_truth(inspected_4b):
    got = inspected_4b
    assert got["model_type"] == "qwen3_vl"
    assert got["total_params"] == 4_437_815_808
    assert got["scopes"]["llm"]["modules"] == 252
    assert got["scopes"]["llm"]["lora_params"] == 33_030_144
    assert got["scopes"]["vision"]["modules"] == 96
    assert got["scopes"]["vision"]["lora_params"] == 6_291_456
    assert got["scopes"]["projector"]["modules"] == 2
    assert got["scopes"]["projector"]["lora_params"] == 237_568
    assert got["scopes"]["deepstack"]["modules"] == 6
    assert got["scopes"]["deepstack"]["lora_params"] == 712_704
    assert got["notes"] == []


def test_qwen3_vl_4b_base_params_match_the_shapes(inspected_4b):
    hidden, inter, q_out, kv_out = 2560, 9728, 32 * 128, 8 * 128
    per_layer = hidden * q_out * 2 + hidden * kv_out * 2 + hidden * inter * 3
    vis, vis_inter = 1024, 4096
    per_block = (vis * 3 * vis + 3 * vis) + (vis * vis + vis) + 2 * vis * vis_inter + vis_inter + vis
    merged = vis * 4
    merger = merged * merged + merged + merged * hidden + hidden
    scopes = inspected_4b["scopes"]
    assert scopes["llm"]["base_params"] == 36 * per_layer
    assert scopes["vision"]["base_params"] == 24 * per_block
    assert scopes["projector"]["base_params"] == merger
    assert scopes["deepstack"]["base_params"] == 3 * merger


def test_qwen3_vl_4b_modules_listing(inspected_4b):
    modules = inspected_4b["modules"]
    assert modules["vision"] == [
        "model.visual.blocks.N.attn.qkv",
        "model.visual.blocks.N.attn.proj",
        "model.visual.blocks.N.mlp.linear_fc1",
        "model.visual.blocks.N.mlp.linear_fc2",
    ]
    assert modules["projector"] == ["model.visual.merger.linear_fc1", "model.visual.merger.linear_fc2"]
    assert modules["deepstack"] == [
        "model.visual.deepstack_merger_list.N.linear_fc1",
        "model.visual.deepstack_merger_list.N.linear_fc2",
    ]
    assert len(modules["llm"]) == 7 and "lm_head" not in modules["llm"]


def test_inspect_with_scopes_zeroes_other_parts():
    got = inspect(str(CONFIGS / "qwen3_vl_tiny.json"), r=4, scopes=["vision.attn"])
    assert got["scopes"]["vision"]["modules"] == 6
    for part in ("llm", "projector", "deepstack"):
        assert got["scopes"][part] == {"modules": 0, "base_params": 0, "lora_params": 0}
        assert got["modules"][part] == []


@pytest.mark.parametrize("model_type", ["qwen3_vl", "qwen2_5_vl"])
@pytest.mark.parametrize("scope", SCOPES)
def test_each_scope_resolves_to_its_modules(tiny, model_type, scope):
    expected = EXPECTED[model_type].get(scope)
    if expected is None:
        with pytest.raises(ScopeError, match="no deepstack"):
            resolve_scopes(tiny[model_type], model_type, [scope])
        return
    resolution = resolve_scopes(tiny[model_type], model_type, [scope])
    assert set(resolution.names()) == expected
    assert set(resolution.modules.values()) == {scope.split(".")[0]}
    assert "lm_head" not in resolution.modules


@pytest.mark.parametrize("model_type", ["qwen3_vl", "qwen2_5_vl"])
def test_llm_is_attn_union_mlp_and_order_follows_model(tiny, model_type):
    model = tiny[model_type]
    union = resolve_scopes(model, model_type, ["llm.attn", "llm.mlp"])
    whole = resolve_scopes(model, model_type, ["llm"])
    assert union == whole
    in_model_order = [name for name, _ in model.named_modules() if name in whole.modules]
    assert whole.names() == in_model_order


def test_qwen2_5_vl_mlp_scopes_do_not_cross(tiny):
    model = tiny["qwen2_5_vl"]
    llm_mlp = set(resolve_scopes(model, "qwen2_5_vl", ["llm.mlp"]).names())
    vision_mlp = set(resolve_scopes(model, "qwen2_5_vl", ["vision.mlp"]).names())
    assert not any(name.startswith("model.visual.") for name in llm_mlp)
    assert "model.visual.blocks.0.mlp.gate_proj" in vision_mlp
    assert "model.visual.blocks.1.mlp.down_proj" in vision_mlp


def test_resolution_helpers(tiny):
    res = resolve_scopes(tiny["qwen3_vl"], "qwen3_vl", ["deepstack", "llm.attn"])
    assert res.parts() == ("llm", "deepstack")
    grouped = res.by_part()
    assert list(grouped) == ["llm", "deepstack"]
    assert set(grouped["llm"]) == LLM_ATTN and set(grouped["deepstack"]) == Q3_DEEP
    assert isinstance(res, Resolution) and res.model_type == "qwen3_vl"


@pytest.mark.parametrize("bad", [["vision.attention"], ["llm", "lm_head"], []])
def test_unknown_or_empty_scopes_list_allowed_words(tiny, bad):
    with pytest.raises(ScopeError) as info:
        resolve_scopes(tiny["qwen3_vl"], "qwen3_vl", bad)
    message = str(info.value)
    assert "\n" not in message
    for word in SCOPES:
        assert word in message


def test_unsupported_model_type(tiny):
    with pytest.raises(ScopeError, match="qwen3_vl_moe"):
        resolve_scopes(tiny["qwen3_vl"], "llava", ["llm"])


def test_moe_llm_mlp_is_reported_honestly(tiny):
    model = tiny["qwen3_vl_moe"]
    with pytest.raises(ScopeError, match="experts are fused parameters, not Linear layers"):
        resolve_scopes(model, "qwen3_vl_moe", ["llm.mlp"])
    llm = resolve_scopes(model, "qwen3_vl_moe", ["llm"])
    assert set(llm.names()) == LLM_ATTN
    got = inspect(str(CONFIGS / "qwen3_vl_moe_tiny.json"), r=4)
    assert got["scopes"]["llm"]["modules"] == len(LLM_ATTN)
    assert got["scopes"]["vision"]["modules"] == 12 and got["scopes"]["deepstack"]["modules"] == 4
    assert any(note.startswith("llm.mlp: 0 modules") and "fused" in note for note in got["notes"])


def test_moe_dense_mlp_layers_are_real_linears():
    config = load_config(str(CONFIGS / "qwen3_vl_moe_tiny.json"))
    config.text_config.mlp_only_layers = [1]
    res = resolve_scopes(meta_model(config), "qwen3_vl_moe", ["llm.mlp"])
    assert set(res.names()) == {f"{LLM}.1.mlp.{leaf}" for leaf in ("gate_proj", "up_proj", "down_proj")}


def test_seed_list_on_qwen3_vl_is_exactly_llm(tiny):
    model = tiny["qwen3_vl"]
    assert resolve_target_modules(model, "qwen3_vl", SEED_LIST) == resolve_scopes(model, "qwen3_vl", ["llm"])


def test_copied_visual_attn_qkv_fails_loudly_on_qwen3_vl(tiny):
    with pytest.raises(ScopeError) as info:
        resolve_target_modules(tiny["qwen3_vl"], "qwen3_vl", [*SEED_LIST, "visual.attn.qkv"])
    message = str(info.value)
    assert "visual.attn.qkv" in message
    assert "model.visual.blocks.N.attn.qkv" in message
    assert "\n" not in message


def test_seed_list_on_qwen2_5_vl_also_hits_vision_mlp(tiny):
    res = resolve_target_modules(tiny["qwen2_5_vl"], "qwen2_5_vl", SEED_LIST)
    assert set(res.names()) == LLM_ATTN | LLM_MLP | Q25_VIS_MLP
    assert res.parts() == ("llm", "vision")
    assert set(res.by_part()["vision"]) == Q25_VIS_MLP


def test_target_modules_full_names_and_all_linear(tiny):
    model = tiny["qwen2_5_vl"]
    res = resolve_target_modules(
        model, "qwen2_5_vl", ["model.visual.merger.mlp.0", "visual.blocks.0.attn.qkv"]
    )
    assert res.modules == {
        "model.visual.blocks.0.attn.qkv": "vision",
        "model.visual.merger.mlp.0": "projector",
    }
    everything = resolve_scopes(model, "qwen2_5_vl", ["llm", "vision", "projector"])
    assert resolve_target_modules(model, "qwen2_5_vl", "all-linear") == everything


@pytest.mark.parametrize("entry", ["lm_head", "embed_tokens", "mlp"])
def test_target_modules_outside_parts_are_refused(tiny, entry):
    with pytest.raises(ScopeError, match="only those can be targeted"):
        resolve_target_modules(tiny["qwen3_vl"], "qwen3_vl", ["q_proj", entry])


def test_moe_seed_list_explains_fused_experts(tiny):
    with pytest.raises(ScopeError, match=r"'gate_proj'.*fused parameters"):
        resolve_target_modules(tiny["qwen3_vl_moe"], "qwen3_vl_moe", SEED_LIST)


def test_empty_target_modules(tiny):
    with pytest.raises(ScopeError):
        resolve_target_modules(tiny["qwen3_vl"], "qwen3_vl", [])


@pytest.mark.parametrize(
    ("name", "part"),
    [
        ("base_model.model.model.visual.blocks.0.attn.qkv.lora_A.default.weight", "vision"),
        ("base_model.model.model.visual.blocks.2.mlp.linear_fc2.lora_B.default.weight", "vision"),
        ("base_model.model.model.language_model.layers.1.mlp.down_proj.lora_A.default.weight", "llm"),
        ("base_model.model.model.visual.merger.linear_fc1.lora_B.other.weight", "projector"),
        ("base_model.model.model.visual.deepstack_merger_list.0.linear_fc1.base_layer.bias", "deepstack"),
        ("model.language_model.layers.0.self_attn.q_proj", "llm"),
        ("model.language_model.layers.0.self_attn.q_proj.weight", "llm"),
        ("base_model.model.lm_head.weight", None),
        ("model.language_model.embed_tokens.weight", None),
        ("model.visual.blocks.0.norm1.weight", None),
        ("model.visual.patch_embed.proj.weight", None),
    ],
)
def test_part_of(name, part):
    assert part_of(name, "qwen3_vl") == part


def test_part_of_is_architecture_aware():
    assert part_of("model.visual.blocks.0.mlp.gate_proj", "qwen2_5_vl") == "vision"
    assert part_of("model.visual.blocks.0.mlp.gate_proj", "qwen3_vl") is None
    assert part_of("model.visual.merger.mlp.2", "qwen2_5_vl") == "projector"


def test_real_peft_wraps_exactly_the_resolution():
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForImageTextToText

    torch.manual_seed(0)
    config = load_config(str(CONFIGS / "qwen3_vl_tiny.json"))
    model = AutoModelForImageTextToText.from_config(config)
    res = resolve_scopes(model, "qwen3_vl", ["llm.attn", "vision", "projector", "deepstack"])
    expected_lora = sum(v["lora_params"] for v in account(model, res, r=4)["scopes"].values())

    peft_model = get_peft_model(model, LoraConfig(r=4, target_modules=res.names()))
    wrapped = {
        name.removeprefix("base_model.model.")
        for name, module in peft_model.named_modules()
        if hasattr(module, "lora_A")
    }
    assert wrapped == set(res.names())

    trainable = [(n, p) for n, p in peft_model.named_parameters() if p.requires_grad]
    assert sum(p.numel() for _, p in trainable) == expected_lora
    assert {n: part_of(n, "qwen3_vl") for n, _ in trainable} == {
        n: res.modules[sc._strip_peft(n)] for n, _ in trainable
    }
    peft_name = "base_model.model.model.visual.blocks.0.attn.qkv.lora_A.default.weight"
    assert part_of(peft_name, "qwen3_vl") == "vision"


def test_account_counts_tied_weights_once(tiny):
    model = tiny["qwen3_vl"]
    res = resolve_scopes(model, "qwen3_vl", ["projector"])
    got = account(model, res, r=8)
    assert got["total_params"] == sum(p.numel() for p in model.parameters())
    assert model.lm_head.weight is model.model.language_model.embed_tokens.weight
    assert got["scopes"]["projector"] == {
        "modules": 2,
        "base_params": (128 * 128 + 128) + (128 * 64 + 64),
        "lora_params": 8 * (128 + 128) + 8 * (128 + 64),
    }
    assert set(got["scopes"]) == set(PARTS)


def test_lora_params():
    assert lora_params(2560, 4096, 16) == 16 * (2560 + 4096)


def test_load_config_errors_are_scope_errors(tmp_path):
    with pytest.raises(ScopeError, match="not found"):
        load_config(str(tmp_path / "missing.json"))
    with pytest.raises(ScopeError, match="not found"):
        load_config(str(tmp_path))
    (tmp_path / "config.json").write_text((CONFIGS / "qwen3_vl_tiny.json").read_text())
    assert load_config(str(tmp_path)).model_type == "qwen3_vl"


def test_import_is_cheap():
    import subprocess
    import sys

    code = "import sys, raylora.train.scopes; print('torch' in sys.modules, 'transformers' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]
