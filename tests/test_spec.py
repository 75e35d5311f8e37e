"""The spec: strict sections, the dotted path language, seed-style configs, every error at once."""

from __future__ import annotations

import pytest

from raylora import spec as spec_lib
from raylora.errors import UserError
from raylora.spec.paths import leaf_paths


def _errors(tmp_path, text: str, overrides=()) -> list[str]:
    path = tmp_path / "spec.yaml"
    path.write_text(text)
    with pytest.raises(UserError) as info:
        spec_lib.load(path, list(overrides))
    return info.value.lines()


def _load(tmp_path, text: str, overrides=()):
    path = tmp_path / "spec.yaml"
    path.write_text(text)
    return spec_lib.load(path, list(overrides))


def test_defaults_and_paths(tmp_path):
    spec = _load(tmp_path, "study: {name: s}\n")
    assert spec.model.name_or_path == "builtin:tiny-qwen3-vl"
    assert spec.training.lora.scope == ["llm"]
    assert spec.training.lora.lora_alpha == 2 * spec.training.lora.r
    flat = spec.flat()
    for path in (
        "model.name_or_path",
        "data.train",
        "data.eval",
        "study.name",
        "study.num_trials",
        "study.max_concurrent_trials",
        "study.scheduler.type",
        "resources.workers_per_trial",
        "resources.placement_strategy",
        "training.max_steps",
        "training.eval_every",
        "training.gradient_checkpointing",
        "training.quantization",
        "training.lora.r",
        "training.lora.alpha",
        "training.lora.dropout",
        "training.lora.scope",
        "training.lora.target_modules",
        "training.learning_rate.llm",
        "training.learning_rate.vision",
        "training.learning_rate.projector",
    ):
        assert path in flat, path
        assert path in leaf_paths(spec_lib.Spec)


def test_overrides_parse_yaml(tmp_path):
    spec = _load(
        tmp_path,
        "study: {name: s}\n",
        [
            "training.lora.scope=[llm, vision]",
            "training.lora.r=8",
            "training.learning_rate.vision=1e-5",
            "training.gradient_checkpointing=true",
        ],
    )
    assert spec.training.lora.scope == ["llm", "vision"]
    assert spec.training.lora.r == 8
    assert spec.training.learning_rate.vision == 1e-5
    assert spec.training.gradient_checkpointing is True


def test_round_trip_through_plain_data(tmp_path):
    spec = _load(tmp_path, "training: {lora: {target_modules: [q_proj]}}\n")
    again = spec_lib.Spec.from_dict(spec.to_dict())
    assert again == spec


@pytest.mark.parametrize(
    "text, expected",
    [
        ("training: {lora: {r: 0}}", "training.lora.r: must be greater than 0, got 0"),
        ("training: {lora: {dropout: 1.0}}", "training.lora.dropout: must be less than 1"),
        ("training: {lora: {dropout: -0.1}}", "training.lora.dropout: must be greater than or equal to 0"),
        (
            "training: {learning_rate: {vision: -1e-5}}",
            "training.learning_rate.vision: must be greater than 0",
        ),
        ("training: {lora: {r: eight}}", "training.lora.r: must be a valid integer, got 'eight'"),
        ("training: {lora: {rank: 8}}", "training.lora.rank: unknown key (allowed: enabled, r, alpha"),
        ("trainin: {}", "trainin: unknown key (allowed: study, model, data, resources, training, search"),
        ("training: {lora: {scope: [llm, visoin]}}", "training.lora.scope[1]: must be 'llm'"),
        ("training: {lora: {scope: []}}", "training.lora.scope: list should have at least 1 item"),
        ("training: {quantization: int8}", "training.quantization: must be 'none', 'nf4' or 'nf4-llm-only'"),
        ("training: {lora: {alpha: 16, alpha_ratio: 2}}", "give alpha or alpha_ratio, not both"),
        ("study: {scheduler: {type: hyperband}}", "study.scheduler.type: must be 'asha' or 'fifo'"),
        ("resources: {placement_strategy: spread}", "resources.placement_strategy: must be 'PACK'"),
        ("data: {image: {min_pixels: 9000, max_pixels: 1000}}", "min_pixels (9000) must be <= max_pixels"),
        ("search: {training.lora.rank: {choice: [8]}}", "search.training.lora.rank: unknown key 'rank'"),
        (
            "search: {training.lora.r: {choice: []}}",
            "search.training.lora.r.choice: must be a non-empty list",
        ),
        ("search: {training.lora.dropout: {uniform: [0.2, 0.1]}}", "low < high must hold, got [0.2, 0.1]"),
        ("search: {training.learning_rate.llm: {loguniform: [0, 1e-3]}}", "low > 0 must hold on a log scale"),
        ("search: {training.lora.r: {int: [4, 16], step: 0}}", "step must be integers, step > 0"),
        ("search: {training.lora.r: {normal: [4, 16]}}", "must be one of {choice: [...]}"),
        (
            "search: {training.lora.r: {choice: [8, 0]}}",
            "value 0 is not valid: training.lora.r: must be greater",
        ),
        ("search: {study.num_trials: {choice: [3]}}", "study, resources and tracking are fixed"),
        ("search: {training.lora.scope: {choice: [[llm], [vison]]}}", "value ['vison'] is not valid"),
        ("search: {training.lora: {choice: [1]}}", "training.lora is a section, not a value"),
        ("resources: {sharding: fsdp}", "resources.sharding: fsdp shards a trial across its workers"),
        ("resources: {offload_params: true}", "resources.offload_params: needs resources.sharding: fsdp"),
        (
            "resources: {sharding: fsdp, workers_per_trial: 2, offload_params: true}\n"
            "training: {quantization: nf4}",
            "resources.offload_params: does not combine with training.quantization: nf4",
        ),
    ],
)
def test_bad_specs_name_the_path(tmp_path, text, expected):
    lines = _errors(tmp_path, text + "\n")
    assert any(expected in line for line in lines), lines
    assert all(line.startswith(str(tmp_path / "spec.yaml")) for line in lines), lines


def test_every_error_at_once_with_lines(tmp_path):
    lines = _errors(
        tmp_path, "training:\n  lora:\n    r: 0\n  quantization: nf8\nsearch:\n  bogus.path: {choice: [1]}\n"
    )
    assert len(lines) == 3
    assert any(":3: training.lora.r" in line for line in lines)
    assert any(":4: training.quantization" in line for line in lines)
    assert any(":6: search.bogus.path" in line for line in lines)


def test_override_errors_name_the_flag(tmp_path):
    lines = _errors(tmp_path, "study: {name: s}\n", ["training.lora.r=0", "training.lorax=1", "nonsense"])
    assert any(line.startswith("--set training.lora.r: must be greater than 0") for line in lines), lines
    assert any(line.startswith("--set training.lorax: unknown key 'lorax'") for line in lines), lines
    assert any("expected path=value" in line for line in lines), lines


@pytest.mark.parametrize(
    "text, expected",
    [
        ("", "the spec file is empty"),
        ("# only a comment\n", "the spec file is empty"),
        ("training: {lora: [r: 1}\n", "YAML syntax error"),
        ("- a\n- b\n", "the spec must be a mapping"),
    ],
)
def test_unreadable_files(tmp_path, text, expected):
    lines = _errors(tmp_path, text)
    assert expected in lines[0]


def test_yaml_syntax_error_names_the_line(tmp_path):
    lines = _errors(tmp_path, "study:\n  name: s\ntraining:\n  lora: {r: 1\n  max_steps: 3\n")
    assert ":5:" in lines[0] or ":4:" in lines[0], lines


def test_missing_file(tmp_path):
    with pytest.raises(UserError, match="no such spec file"):
        spec_lib.load(tmp_path / "nope.yaml")


SEED_5_1 = """
training:
  lora:
    enabled: true
    r: 16
    alpha: 32
    dropout: 0.05
    target_modules: [q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj]
  gradient_checkpointing: true
  use_4bit: false
  sft:
    learning_rate: 2.0e-4
    per_device_train_batch_size: 1
    gradient_accumulation_steps: 16
"""


def test_seed_style_config_is_accepted(tmp_path):
    spec = _load(tmp_path, SEED_5_1)
    training = spec.training
    assert training.quantization == "none"
    assert training.lora.target_modules[0] == "q_proj"
    assert training.learning_rate.llm == training.learning_rate.vision == 2e-4
    assert training.gradient_accumulation_steps == 16
    assert training.lora.lora_alpha == 32


def test_seed_5_2_expressed_with_scopes(tmp_path):
    text = "training:\n  lora: {r: 8, alpha: 16, scope: [llm, vision]}\n  use_4bit: true\n"
    spec = _load(tmp_path, text)
    assert spec.training.quantization == "nf4"
    assert spec.training.lora.scope == ["llm", "vision"]


def test_seed_style_conflicts(tmp_path):
    lines = _errors(tmp_path, "training:\n  use_4bit: true\n  quantization: none\n  sft: {lr: 1}\n")
    assert any("give use_4bit or quantization, not both" in line for line in lines)
    assert any("training.sft.lr: unknown key" in line for line in lines)


def test_scope_and_target_modules_exclusive(tmp_path):
    lines = _errors(tmp_path, "training: {lora: {scope: [llm], target_modules: [q_proj]}}\n")
    assert "give scope or target_modules, not both" in lines[0]
    # --set of one replaces the other, which is what a user overriding a seed config means
    spec = _load(tmp_path, SEED_5_1, ["training.lora.scope=[llm, vision]"])
    assert spec.training.lora.target_modules is None


def test_objective_needs_the_data_it_reads(tmp_path):
    lines = _errors(tmp_path, "data: {eval: null}\n")
    assert "study.objective.metric: eval/loss needs data.eval" in lines[0]
    spec = _load(tmp_path, "data: {eval: null}\nstudy: {objective: {metric: train/loss}}\n")
    assert spec.data.eval is None


def test_overrides_that_a_user_reasonably_types_are_accepted(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text("training: {max_steps: 40, eval_every: 10, lora: {r: 8, alpha_ratio: 2}}\n")
    # Fewer steps than eval_every: evaluate at the end.
    spec = spec_lib.load(path, ["training.max_steps=6"])
    assert (spec.training.max_steps, spec.training.eval_every) == (6, 10)
    # alpha replaces the spec's alpha_ratio (and the other way round) instead of clashing with it.
    assert spec_lib.load(path, ["training.lora.alpha=4"]).training.lora.lora_alpha == 4
    path.write_text("training: {lora: {r: 8, alpha: 4}}\n")
    assert spec_lib.load(path, ["training.lora.alpha_ratio=3"]).training.lora.lora_alpha == 24
