"""The public Python API: the README's example, on the embedded defaults."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import raylora

ROOT = Path(__file__).resolve().parents[1]


def test_surface_is_small_and_declared():
    assert sorted(raylora.__all__) == [
        "Spec",
        "UserError",
        "load_spec",
        "promote_best",
        "run_study",
        "train_trial",
    ]
    assert all(hasattr(raylora, name) for name in raylora.__all__)


def test_load_spec_and_train_one_trial(tmp_path):
    overrides = ["training.max_steps=2", "training.eval_every=2", "training.click_eval_samples=0"]
    spec = raylora.load_spec(ROOT / "search_spaces" / "quickstart.yaml", overrides)
    assert isinstance(spec, raylora.Spec) and spec.training.max_steps == 2
    outcome = raylora.train_trial(spec, tmp_path)
    assert outcome.metrics["step"] == 2 and "eval/loss" in outcome.metrics
    assert (tmp_path / "adapter" / "adapter_model.safetensors").is_file()
    assert json.loads((tmp_path / "metrics.json").read_text())["step"] == 2


def test_mistakes_raise_user_error_with_one_line_each(tmp_path):
    with pytest.raises(raylora.UserError) as caught:
        raylora.load_spec(ROOT / "search_spaces" / "quickstart.yaml", ["training.lora.r=0", "nope=1"])
    lines = caught.value.lines()
    assert len(lines) == 2 and any("training.lora.r" in line for line in lines), lines
