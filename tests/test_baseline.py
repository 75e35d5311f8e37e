"""The base model's score on a study's eval set: measured once, cached by fingerprint, compared per item."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import raylora
from raylora import layout
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


def test_a_study_reuses_its_baseline_json_for_the_same_spec(tmp_path):
    spec = raylora.load_spec(ROOT / "search_spaces" / "quickstart.yaml")
    saved = {"fingerprint": baseline.fingerprint(spec), "model": "m", "summary": {"n": 1}, "items": {}}
    (tmp_path / layout.BASELINE).write_text(json.dumps(saved))
    # Found in the study's folder: no Ray task (Ray is not even started here).
    assert baseline.for_study(spec, tmp_path, log=lambda line: None) == saved
    assert baseline.wanted(spec)
    no_generation = ["training.click_eval_samples=0"]
    assert not baseline.wanted(raylora.load_spec(ROOT / "search_spaces" / "quickstart.yaml", no_generation))


def test_the_verdict_says_whether_the_best_trial_beat_the_base():
    from raylora.record.states import TrialState
    from raylora.record.trials import TrialRecord
    from raylora.tracking import verdict

    vs = {"metric": "eval/click_acc", "n": 10, "base": 0.2, "trial": 0.8, "gain": 0.6, "p_value": 0.03125}
    best = TrialRecord("t001", TrialState.COMPLETE, value=0.8, vs_base=vs)
    other = TrialRecord("t000", TrialState.COMPLETE, value=0.5, vs_base={**vs, "trial": 0.5, "gain": 0.3})
    lines = verdict.verdict([other, best], "eval/click_acc", "max")
    assert lines[0] == (
        "Against the base model: the best trial t001 scores eval/click_acc = 0.8, the base model 0.2 on the "
        "same 10 eval records (+60.0 points; McNemar p = 0.031, significant at 5%)."
    )


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


# -- in a study: measured before the trials, each finished trial compared on the same records ------------

STUDY = {
    "study": {
        "name": "vsbase",
        "objective": {"metric": "eval/click_acc", "mode": "max"},
        "num_trials": 2,
        "max_concurrent_trials": 1,
        "sampler": {"type": "random", "seed": 10},  # seed 10: quantization none, then nf4
        "scheduler": {"type": "fifo"},
    },
    "data": {"image": {"min_pixels": 4096, "max_pixels": 65536}, "max_length": 512, "eval_samples": 4},
    "resources": {"workers_per_trial": 1, "cpus_per_worker": 0.5},
    "training": {
        "max_steps": 2,
        "eval_every": 2,
        "per_device_train_batch_size": 2,
        "click_eval_samples": 2,
        "max_new_tokens": 4,
        "per_device_eval_batch_size": 8,
    },
    "search": {"training.quantization": {"choice": ["none", "nf4"]}},
}


@pytest.mark.slow
def test_a_study_scores_the_base_once_and_each_trial_against_it(tmp_path):
    """Its two trials, a full-precision one and then a 4-bit one, are trained by one worker group: the nf4
    trial runs on the worker that had trained without bitsandbytes."""
    import csv
    import json
    import subprocess
    import sys

    import yaml
    from mlflow import MlflowClient

    quickstart = yaml.safe_load((ROOT / "search_spaces" / "quickstart.yaml").read_text())
    merged = {k: {**quickstart.get(k, {}), **STUDY.get(k, {})} for k in ("study", "model", "data")}
    merged |= {k: {**quickstart[k], **STUDY[k]} for k in ("resources", "training")}
    merged["search"] = STUDY["search"]
    path = tmp_path / "vsbase.yaml"
    path.write_text(yaml.safe_dump(merged, sort_keys=False))
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    command = [sys.executable, "-m", "raylora", "search", str(path), "--storage", str(tmp_path / "st")]
    proc = subprocess.run(
        [*command, "--tracking-uri", uri], capture_output=True, text=True, cwd=ROOT, timeout=600
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]

    directory = tmp_path / "st" / "vsbase"
    base = json.loads((directory / "baseline.json").read_text())
    assert base == json.loads(baseline.cache_path(raylora.load_spec(path)).read_text())
    n = base["summary"]["click_n"]
    assert n == len(base["items"]) == 16  # the whole eval set, not data.eval_samples

    summary = json.loads((directory / "summary.json").read_text())
    assert [t["params"]["training.quantization"] for t in summary["trials"]] == ["none", "nf4"]
    assert [(t["state"], t["steps"]) for t in summary["trials"]] == [("COMPLETE", 2), ("COMPLETE", 2)]
    assert len([p for p in (directory / "pools").iterdir() if p.is_dir()]) == 1, "one worker group"
    complete = summary["trials"]
    for trial in complete:
        vs = trial["vs_base"]
        assert (vs["metric"], vs["n"], vs["base"]) == ("eval/click_acc", n, base["summary"]["click_acc"])
        assert vs["trial"] == pytest.approx(trial["value"])  # the final evaluation's own click_acc
        assert vs["gain"] == pytest.approx(vs["trial"] - vs["base"])
        assert 0.0 <= vs["p_value"] <= 1.0

    with (directory / "report" / "leaderboard.csv").open() as f:
        rows = {r["trial_id"]: r for r in csv.DictReader(f)}
    for trial in complete:
        row = rows[trial["trial_id"]]
        assert float(row["gain_vs_base"]) == pytest.approx(trial["vs_base"]["gain"])
        assert float(row["p_vs_base"]) == pytest.approx(trial["vs_base"]["p_value"])
    markdown = (directory / "report" / "leaderboard.md").read_text()
    assert "| vs base | p |" in markdown and f"on the same {n} eval records" in markdown
    assert "Against the base model: the best trial" in (directory / "report" / "index.html").read_text()
    assert f"base model: click_acc {base['summary']['click_acc']:.3g}" in proc.stdout

    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("vsbase")
    (parent,) = client.search_runs([experiment.experiment_id], "tags.`raylora.role` = 'study'")
    assert parent.data.metrics["base/click_acc"] == pytest.approx(base["summary"]["click_acc"])
    assert parent.data.metrics["base/n"] == n
    assert parent.data.tags["raylora.baseline"] == base["fingerprint"]

    # `raylora report` compares trials the summary has no comparison for (a study stopped by a fault)
    from raylora.study import refresh

    expected = [t["vs_base"] for t in summary["trials"]]
    for trial in summary["trials"]:
        trial.pop("vs_base")
    (directory / "summary.json").write_text(json.dumps(summary))
    refresh.regenerate(str(directory), log=lambda line: None)
    again = json.loads((directory / "summary.json").read_text())
    assert [t["vs_base"] for t in again["trials"]] == expected
