"""The base model's score on a study's eval set: measured once, cached by fingerprint, compared per item."""

from __future__ import annotations

from pathlib import Path

import pytest

import raylora
from raylora.study import baseline

ROOT = Path(__file__).resolve().parents[1]


def test_compare_pairs_items_and_tests_the_difference():
    base = {f"e:{i}": [i < 2, None, None, False] for i in range(10)}  # right on 2 of 10
    trial = {f"e:{i}": [i < 8, None, None, False] for i in range(10)}  # right on 8 of 10
    trial["e:99"] = [True, None, None, False]  # not in the base: not paired
    result = baseline.compare(base, trial, "eval/click_acc")
    assert (result["n"], result["base"], result["trial"], result["gain"]) == (
        10,
        0.2,
        0.8,
        pytest.approx(0.6),
    )
    assert (result["a_only"], result["b_only"], result["method"]) == (6, 0, "exact")
    assert result["p_value"] == pytest.approx(2 / 64)
    assert baseline.compare(base, trial, "eval/step_acc") is None  # no navigation records
    with pytest.raises(ValueError, match="not a per-record accuracy"):
        baseline.compare(base, trial, "eval/loss")


def test_the_fingerprint_follows_what_decides_the_score():
    spec = raylora.load_spec(ROOT / "search_spaces" / "quickstart.yaml")
    same = raylora.load_spec(ROOT / "search_spaces" / "quickstart.yaml", ["training.lora.r=64"])
    other = raylora.load_spec(ROOT / "search_spaces" / "quickstart.yaml", ["data.template=qwen3vl"])
    assert baseline.fingerprint(spec) == baseline.fingerprint(same)  # trial settings do not matter
    assert baseline.fingerprint(spec) != baseline.fingerprint(other)


@pytest.mark.slow
def test_the_base_model_is_measured_once(monkeypatch):
    spec = raylora.load_spec(ROOT / "search_spaces" / "quickstart.yaml", ["training.max_new_tokens=4"])
    baseline.cache_path(spec).unlink(missing_ok=True)
    first = baseline.load_or_measure(spec, log=lambda line: None)
    assert first["summary"]["n"] == len(first["items"]) > 0
    assert first["summary"]["click_n"] == first["summary"]["n"]

    def no_second_measurement(spec):
        raise AssertionError("measured again")

    monkeypatch.setattr(baseline, "measure", no_second_measurement)
    assert baseline.load_or_measure(spec, log=lambda line: None) == first
