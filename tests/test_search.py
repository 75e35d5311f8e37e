"""`raylora search` end to end on a real local Ray with a real Optuna journal (few, short trials)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
import yaml
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend

pytestmark = pytest.mark.slow  # every test here starts Ray, an MLflow or S3 server, or trains

ROOT = Path(__file__).resolve().parents[1]

STUDY = {
    "study": {
        "name": "s",
        "num_trials": 3,
        "max_concurrent_trials": 1,
        # Random seed 59 proposes (r=8, lr=1e-2), then (r=8, lr=1e-7), then (r=4, lr=1e-2).
        "sampler": {"type": "random", "seed": 59},
        "scheduler": {"type": "asha", "grace_steps": 2, "reduction_factor": 2},
    },
    "data": {"image": {"min_pixels": 4096, "max_pixels": 65536}, "max_length": 512, "eval_samples": 8},
    "resources": {"workers_per_trial": 1, "cpus_per_worker": 0.5},
    "training": {
        "max_steps": 6,
        "eval_every": 2,
        "per_device_train_batch_size": 2,
        "click_eval_samples": 0,
        "lora": {"scope": ["llm"]},
    },
    "search": {
        "training.lora.r": {"choice": [8, 4]},
        "training.learning_rate.llm": {"choice": [1.0e-2, 1.0e-7]},
    },
}


def _write_spec(tmp_path: Path, **sections) -> Path:
    spec = json.loads(json.dumps(STUDY))
    for key, value in sections.items():
        spec[key].update(value)
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def _search_cmd(spec: Path, storage: Path, *args: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "raylora",
        "search",
        str(spec),
        "--storage",
        str(storage),
        "--tracking-uri",
        _tracking(storage),
        *args,
    ]


def _search(spec: Path, storage: Path, *args: str, env: dict | None = None, **kw):
    cmd = _search_cmd(spec, storage, *args)
    return subprocess.run(
        cmd, capture_output=True, text=True, cwd=ROOT, env={**os.environ, **(env or {})}, timeout=600, **kw
    )


def _tracking(storage: Path) -> str:
    return f"sqlite:///{storage}/mlflow.db"


def _child_runs(storage: Path):
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=_tracking(storage))
    experiment = client.get_experiment_by_name("s")
    return client, [
        r
        for r in client.search_runs([experiment.experiment_id])
        if r.data.tags.get("raylora.role") == "trial"
    ]


def _optuna_trials(study_dir: Path):
    storage = JournalStorage(JournalFileBackend(str(study_dir / "optuna.journal")))
    return optuna.load_study(study_name=study_dir.name, storage=storage).get_trials()


def test_asha_prunes_oom_is_infeasible_and_resume_is_a_no_op(tmp_path):
    # One CPU per worker: if a pruned trial kept its workers' placement group, the next could never start.
    # 40 steps: long enough that a pruned trial's workers must be told to stop, not just run out of steps.
    spec = _write_spec(
        tmp_path, resources={"cpus_per_worker": 1.0}, training={"max_steps": 40, "eval_every": 2}
    )
    proc = _search(spec, tmp_path / "st", env={"RAYLORA_INJECT_OOM": "training.lora.r=4"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    study_dir = tmp_path / "st" / "s"
    summary = json.loads((study_dir / "summary.json").read_text())
    trials = {t["trial_id"]: t for t in summary["trials"]}
    assert [trials[t]["state"] for t in ("t000", "t001", "t002")] == ["COMPLETE", "PRUNED", "INFEASIBLE"]
    assert trials["t000"]["steps"] == 40 and trials["t001"]["steps"] == 2
    # The pruned trial's Train run ended itself soon after (its trial driver went on to t002).
    import torch

    states = (study_dir / "runs" / "t001").glob("checkpoint_*/trainer_state.pt")
    assert max(torch.load(p, weights_only=True)["step"] for p in states) < 40
    assert trials["t002"]["error"].startswith("out of memory")
    assert trials["t001"]["value"] > trials["t000"]["value"]

    best = summary["best_trial"]
    assert best["trial_id"] == "t000" and best["value"] == trials["t000"]["value"]
    assert best["params"] == {"training.lora.r": 8, "training.learning_rate.llm": 1e-2}
    assert (Path(best["adapter_path"]) / "adapter_model.safetensors").is_file()
    assert trials["t000"]["nodes"], "the nodes the workers ran on are recorded"

    states = [(t.state, t.constraints.get("out_of_memory")) for t in _optuna_trials(study_dir)]
    TS = optuna.trial.TrialState
    assert states == [(TS.COMPLETE, 0.0), (TS.PRUNED, 0.0), (TS.PRUNED, 1.0)]
    assert "t001 pruned at step 2" in proc.stdout and "Configuration for experiment" not in proc.stdout
    _, children = _child_runs(tmp_path / "st")
    states = {
        r.data.tags["raylora.trial_id"]: (r.data.tags["raylora.state"], r.info.status) for r in children
    }
    assert states == {
        "t000": ("COMPLETE", "FINISHED"),
        "t001": ("PRUNED", "FINISHED"),
        "t002": ("INFEASIBLE", "FAILED"),
    }
    assert (
        next(r for r in children if r.data.tags["raylora.trial_id"] == "t002")
        .data.tags["raylora.error"]
        .startswith("out of memory")
    )

    before = (study_dir / "summary.json").read_text()
    again = _search(spec, tmp_path / "st", "--resume")
    assert again.returncode == 0, again.stderr[-2000:]
    assert "nothing to do" in again.stdout
    assert (study_dir / "summary.json").read_text() == before
    assert len(_optuna_trials(study_dir)) == 3


def test_trials_that_cannot_fit_the_gpu_are_infeasible_without_launching(tmp_path):
    spec = _write_spec(
        tmp_path, study={"num_trials": 2}, resources={"gpu_memory_gb": 0.001}
    )  # 1 MiB: nothing fits
    proc = _search(spec, tmp_path / "st")
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((tmp_path / "st" / "s" / "summary.json").read_text())
    assert [t["state"] for t in summary["trials"]] == ["INFEASIBLE", "INFEASIBLE"]
    assert all("predicted" in t["error"] and t["steps"] == 0 for t in summary["trials"])
    assert not (tmp_path / "st" / "s" / "runs").exists(), "no Train run was launched"
    assert [t.constraints["out_of_memory"] for t in _optuna_trials(tmp_path / "st" / "s")] == [1.0, 1.0]


def test_resume_settles_trials_optuna_finished_before_the_summary_was_saved(tmp_path):
    # A driver killed between telling Optuna and saving summary.json: the trial is finished, not re-run.
    from raylora.record.trials import StudyRecord, TrialRecord
    from raylora.spec import Spec
    from raylora.study.optuna_searcher import open_optuna, settle_interrupted

    spec = Spec.from_dict(yaml.safe_load(_write_spec(tmp_path).read_text()))
    directory = tmp_path / "s"
    study = open_optuna(directory, spec)
    record = StudyRecord.open(directory, spec)
    outcomes = {"t000": 6.5, "t001": "pruned", "t002": "oom", "t003": "running", "t004": "failed"}
    for number, (slot, outcome) in enumerate(outcomes.items()):
        trial = study.ask()
        record.trials[slot] = TrialRecord(slot, optuna_number=number, steps=2, last_value=7.0)
        if outcome in ("pruned", "oom"):
            trial.set_constraint("out_of_memory", 1.0 if outcome == "oom" else 0.0)
            study.tell(trial, state=optuna.trial.TrialState.PRUNED)
        elif outcome == "failed":
            trial.set_user_attr("error", "ValueError: boom")
            study.tell(trial, state=optuna.trial.TrialState.FAIL)
        elif outcome != "running":
            study.tell(trial, outcome)

    again = settle_interrupted(record, study)

    assert [t.trial_id for t in again] == ["t003"]
    settled = StudyRecord.open(directory, spec).trials
    states = {t.trial_id: (t.state, t.value) for t in settled.values()}
    assert states == {
        "t000": ("COMPLETE", 6.5),
        "t001": ("PRUNED", 7.0),
        "t002": ("INFEASIBLE", None),
        "t003": ("RUNNING", None),
        "t004": ("FAILED", None),
    }
    assert settled["t000"].values == {spec.study.objective.metric: 6.5}  # as a summary rebuild reads it
    assert settled["t004"].error == "ValueError: boom"
    assert [t.state for t in study.get_trials()][-1] == optuna.trial.TrialState.FAIL


def test_a_stale_ray_start_record_gets_a_fresh_local_ray(tmp_path, ray_tmpdir):
    """A cluster killed without `ray stop` leaves its address in <ray tmp>/ray_current_cluster: Ray alone
    would wait on that dead address forever."""
    from mlflow_server import free_port

    (ray_tmpdir / "ray").mkdir()
    (ray_tmpdir / "ray" / "ray_current_cluster").write_text(f"127.0.0.1:{free_port()}")  # nobody there
    proc = subprocess.run(
        _search_cmd(_write_spec(tmp_path), tmp_path / "st", "--dry-run"),
        env={**os.environ, "RAY_TMPDIR": str(ray_tmpdir)},
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "  node " in proc.stdout, proc.stdout
    # The driver ended the local Ray it started: no process naming its temp root is left (Ray's own
    # processes and its workers all carry the session folder under RAY_TMPDIR in their command lines).
    deadline = time.monotonic() + 10
    while (left := _processes_naming(str(ray_tmpdir))) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not left, left


def _processes_naming(text: str) -> list[str]:
    found = []
    for proc_dir in Path("/proc").glob("[0-9]*"):
        try:
            command = (proc_dir / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if text in command:
            found.append(f"{proc_dir.name}: {command[:200]}")
    return found


def test_the_quickstart_says_its_start_up_phases_progress_between_evaluations_and_ends_on_its_verdict(
    tmp_path,
):
    # Not a terminal: plain lines. Every phase that lasts a second is said, and each running trial's step
    # once a second between its evaluations (RAYLORA_PROGRESS_EVERY_S=1). Rank 0 tells the pool its step
    # at most every 2 s, so training must outlast that by a margin: 90 steps take ~6 s on a quiet 2-core
    # machine (30 took 2 s there, and no step between the first and the last was ever told).
    quickstart = ROOT / "search_spaces" / "quickstart.yaml"
    overrides = ["study.num_trials=1", "training.max_steps=90", "training.eval_every=90"]
    args = [part for value in overrides for part in ("--set", value)]
    proc = _search(quickstart, tmp_path / "st", *args, env={"RAYLORA_PROGRESS_EVERY_S": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.splitlines()
    assert lines[0] == "study quickstart: starting Ray", proc.stdout
    order = ["starting workers", "importing", "loading the model", "indexing the data", "first training step"]
    # t000's phases, and those of its worker group said before Tune had handed it the trial
    phase_line = re.compile(r"\[\d\d:\d\d\] (?:t000|workers 0) ([a-z][a-z ]+?)(?: \d+/\d+)?$")
    said = [(i, m.group(1)) for i, line in enumerate(lines) if (m := phase_line.match(line))]
    phases = [p for p in dict.fromkeys(p for _, p in said) if p in order]
    assert len(phases) >= 2 and phases == sorted(phases, key=order.index), proc.stdout
    first_step = next(i for i, line in enumerate(lines) if re.search(r"\] t000 step \d+", line))
    last_phase = max(i for i, p in said if p in order)
    assert last_phase < first_step, proc.stdout
    study_dir = tmp_path / "st" / "quickstart"
    ending = [
        line
        for line in lines
        if re.match(r"(report|leaderboard|summary|MLflow|Optuna|Ray dashboard): ", line)
    ]
    assert ending[0] == f"report: {study_dir / 'report' / 'index.html'}  (the verdict)", proc.stdout
    assert f"leaderboard: {study_dir / 'report' / 'leaderboard.md'}" in ending
    assert (
        f"Optuna: optuna-dashboard {study_dir / 'optuna.journal'}  (pip install 'raylora[dashboard]')"
        in ending
    )
    assert any(
        re.fullmatch(r"Ray dashboard: http://127\.0\.0\.1:\d+ \(while this Ray runs\)", x) for x in ending
    )
    assert (study_dir / "report" / "index.html").is_file()
    # between evaluations: the first line after step 1 has no rate to give an eta from yet; later ones do
    progress = re.findall(r"\] t000 step (\d+)/90 · [\d.]+ samples/s( · eta \d+:\d\d)?", proc.stdout)
    steps = [int(step) for step, _ in progress]
    assert steps and steps == sorted(steps) and steps[0] < 90, proc.stdout
    assert any(eta for step, eta in progress if 1 < int(step) < 90), proc.stdout
    assert "base model: " in proc.stdout  # scored beside the trial: the study has room for it


def test_pareto_asha_runs_inside_a_real_tune_experiment(tmp_path):
    """ParetoASHA (what a multi-objective study gets) is driven by Tune itself: trials dominated at a
    rung stop there, and the two that no trial dominates train to the end."""
    import ray
    from ray import tune

    from raylora.study.stopping import ParetoASHA

    def trainable(config):
        for step in range(1, 9):
            tune.report({"step": step, "eval/loss": config["a"] / step, "cost/peak_mem_gb": config["b"]})

    goals = [("eval/loss", "min"), ("cost/peak_mem_gb", "min")]
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        results = tune.Tuner(
            trainable,
            param_space={"a": tune.grid_search([1, 2, 3, 4, 5, 6]), "b": tune.grid_search([1.0, 2.0])},
            tune_config=tune.TuneConfig(
                scheduler=ParetoASHA(goals, max_t=7, grace_period=2, reduction_factor=2),
                max_concurrent_trials=2,
            ),
            run_config=tune.RunConfig(storage_path=str(tmp_path), verbose=0),
        ).fit()
    finally:
        ray.shutdown()
    steps = {(r.config["a"], r.config["b"]): r.metrics["step"] for r in results}
    assert steps[(1, 1.0)] == 8  # best on both: never stopped
    assert max(steps.values()) == 8 and min(steps.values()) == 2  # others stopped at the rungs 2 and 4
    assert sum(s == 2 for s in steps.values()) >= 6
