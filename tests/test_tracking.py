"""A study recorded in MLflow, read back with MlflowClient: against a real `mlflow server` on loopback."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from mlflow import MlflowClient
from mlflow_server import mlflow_server

pytestmark = pytest.mark.slow  # every test here starts Ray, an MLflow or S3 server, or trains

ROOT = Path(__file__).resolve().parents[1]


def _study(
    tmp_path: Path, name: str, max_steps: int, click_eval_samples: int, eval_samples: int, eval_file=None
) -> Path:
    """A 2-trial FIFO quickstart study YAML (on ``eval_file`` when given); returns its path."""
    spec = yaml.safe_load((ROOT / "search_spaces" / "quickstart.yaml").read_text())
    spec["study"].update(
        {"name": name, "num_trials": 2, "max_concurrent_trials": 1, "scheduler": {"type": "fifo"}}
    )
    spec["training"].update(
        {"max_steps": max_steps, "eval_every": 2, "click_eval_samples": click_eval_samples}
    )
    spec["data"]["eval_samples"] = eval_samples
    if eval_file is not None:
        spec["data"]["eval"] = str(eval_file)
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def _search_cmd(path: Path, tmp_path: Path, uri: str) -> list[str]:
    storage = str(tmp_path / "st")
    return [sys.executable, "-m", "raylora", "search", str(path), "--storage", storage, "--tracking-uri", uri]


def test_secrets_never_reach_mlflow_params():
    from raylora.redact import scrub

    kept = scrub(
        {
            "training.lora.r": "16",
            "HF_TOKEN": "hf_x",
            "tracking.aws_secret_access_key": "s",
            "db_password": "p",
            "api_key": "k",
            "model.name_or_path": "Qwen/Qwen3-VL-2B-Instruct",
        }
    )
    assert kept == {"training.lora.r": "16", "model.name_or_path": "Qwen/Qwen3-VL-2B-Instruct"}


SECRETS = ("S3CR3T-URI", "S3CR3T-SET", "S3CR3T-ENV")


def _leaks(root: Path) -> list[str]:
    """Each file under ``root`` holding a planted secret, with the secret."""
    found = []
    for path in root.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            found += [f"{path}: {s}" for s in SECRETS if s.encode() in data]
    return found


def test_study_survives_an_mlflow_outage_sends_everything_later_and_leaks_no_credential(tmp_path, ray_tmpdir):
    """The server goes down mid-trial and comes back: the study goes on and sends every record. Its URI
    carries a password (``--tracking-uri``, and another in ``tracking.tracking_uri``) and the environment
    two more; none is printed, sent to MLflow or written, by the study (its outage lines included), its
    report or its promotion."""
    import time

    from mlflow_server import free_port

    # 20 steps: warm workers train a few steps per second; the study must outlast the server's restart.
    path = _study(tmp_path, "outage", max_steps=20, click_eval_samples=0, eval_samples=4)
    port = free_port()
    summary = tmp_path / "st" / "outage" / "summary.json"
    env = {
        **os.environ,
        "RAY_TMPDIR": str(ray_tmpdir),
        "MLFLOW_TRACKING_PASSWORD": "S3CR3T-ENV",
        "AWS_SECRET_ACCESS_KEY": "S3CR3T-ENV",
    }

    def raylora(*args: str) -> str:
        proc = subprocess.run(
            [sys.executable, "-m", "raylora", *args], capture_output=True, text=True, cwd=tmp_path, env=env
        )
        assert proc.returncode == 0, proc.stderr[-3000:]
        return proc.stdout + proc.stderr

    with mlflow_server(tmp_path / "mlflow", port=port) as uri:
        planted = uri.replace("http://", "http://alice:S3CR3T-URI@")
        in_set = uri.replace("http://", "http://bob:S3CR3T-SET@") + "/?token=S3CR3T-SET"
        cmd = _search_cmd(path, tmp_path, planted) + ["--set", f"tracking.tracking_uri={in_set}"]
        log = open(tmp_path / "driver.log", "w")
        driver = subprocess.Popen(cmd, cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT, env=env)
        deadline = time.monotonic() + 300
        while not (summary.is_file() and json.loads(summary.read_text())["trials"][0]["steps"] >= 2):
            assert time.monotonic() < deadline and driver.poll() is None, (
                tmp_path / "driver.log"
            ).read_text()
            time.sleep(0.5)
    # The server is down now, mid-trial; bring it back (same store) once the driver has found it down
    # (its records wait to be sent). Its start takes seconds: it overlaps the rest of the study, which
    # must not end before it (the end waits only for a store that went down moments before).
    while "MLflow unreachable" not in (tmp_path / "driver.log").read_text():
        assert time.monotonic() < deadline and driver.poll() is None, (tmp_path / "driver.log").read_text()
        time.sleep(0.2)
    with mlflow_server(tmp_path / "mlflow", port=port):
        assert driver.wait(timeout=400) == 0, (tmp_path / "driver.log").read_text()[-3000:]
        out = (tmp_path / "driver.log").read_text()
        assert "MLflow unreachable" in out and "reachable again" in out, out[-3000:]
        assert f"{uri}/#/experiments/" in out, out[-3000:]  # the study's runs, where the UI shows them

        client = MlflowClient(tracking_uri=uri)
        experiment = client.get_experiment_by_name("outage")
        runs = client.search_runs([experiment.experiment_id])
        children = [r for r in runs if r.data.tags.get("raylora.role") == "trial"]
        assert sorted(r.data.tags["raylora.trial_id"] for r in children) == ["t000", "t001"]
        for run in children:
            assert run.info.status == "FINISHED" and run.data.tags["raylora.state"] == "COMPLETE"
            steps = [m.step for m in client.get_metric_history(run.info.run_id, "eval/loss")]
            assert steps == list(range(2, 21, 2)), steps
            names = {a.path for a in client.list_artifacts(run.info.run_id, "adapter")}
            assert "adapter/best" in names

        printed = [out, raylora("report", str(tmp_path / "st" / "outage"), "--tracking-uri", planted)]
        promoted = raylora(
            "promote", "best", "--experiment", "outage", "--tracking-uri", planted, "--model-name", "it's"
        )
        printed.append(promoted)
        assert "registered it's version 1 (@champion)" in promoted, promoted
        runs = client.search_runs([experiment.experiment_id])
        sent = json.dumps([{"params": r.data.params, "tags": r.data.tags} for r in runs])
    assert json.loads((tmp_path / "st" / "outage" / "spec.json").read_text())["tracking_uri"] == uri
    assert [s for s in SECRETS if s in "".join(printed) or s in sent] == []
    assert _leaks(tmp_path / "st") == [] and _leaks(tmp_path / "mlflow") == []
    assert "View run" not in "".join(printed)


def test_a_study_run_while_mlflow_is_down_reaches_the_server_whole_and_exactly_once(
    tmp_path, small_eval_file
):
    """The study runs with nothing listening at its tracking URI; its resume, with `mlflow server` up, sends
    what was saved: the parent run and a child per trial with params, metric curves, artifacts and the
    report, each once (the live path is the outage test's). Two eval records: every trial's final
    evaluation, and the base model's, generates for each of them."""
    from mlflow_server import free_port

    path = _study(tmp_path, "offline", 4, click_eval_samples=2, eval_samples=6, eval_file=small_eval_file)
    uri = f"http://127.0.0.1:{free_port()}"  # nothing listens there until the server starts below
    study = tmp_path / "st" / "offline"
    cmd = _search_cmd(path, tmp_path, uri)

    def run(command):
        return subprocess.run(command, capture_output=True, text=True, cwd=tmp_path, timeout=600)

    proc = run(cmd)
    assert proc.returncode == 0, proc.stderr[-3000:]
    pending = study / "mlflow_pending.json"
    assert f"MLflow still unreachable at {uri}" in proc.stdout and str(pending) in proc.stdout, proc.stdout
    assert f"MLflow: {uri}\n" in proc.stdout, proc.stdout  # the server's UI, not `mlflow ui` on a URL
    saved = json.loads(pending.read_text())
    assert saved["tracking_uri"] == uri
    kinds = [r["write"] for r in saved["records"]]
    assert (
        kinds.count("trial_run") == 2
        and kinds.count("metrics") == 4
        and kinds[-2:] == ["study_end", "report"]
    )
    assert all(t["mlflow_run_id"] is None for t in json.loads((study / "summary.json").read_text())["trials"])

    def recorded(client):
        summary = json.loads((study / "summary.json").read_text())
        by_id = {t["trial_id"]: t for t in summary["trials"]}
        experiment = client.get_experiment_by_name("offline")
        runs = client.search_runs([experiment.experiment_id])
        children = {
            r.data.tags["raylora.trial_id"]: r for r in runs if r.data.tags["raylora.role"] == "trial"
        }
        parents = [r for r in runs if r.data.tags["raylora.role"] == "study"]
        assert len(runs) == 3 and len(parents) == 1 and sorted(children) == ["t000", "t001"]
        parent = parents[0]
        assert parent.info.status == "FINISHED"
        assert parent.data.params["study.name"] == "offline"
        assert "search.training.lora.scope" in parent.data.params
        assert parent.data.tags["raylora.version"]
        assert {
            "report/leaderboard.csv",
            "report/leaderboard.md",
            "report/scope_comparison.png",
            "report/importances.json",
        } <= {a.path for a in client.list_artifacts(parent.info.run_id, "report")}
        best_values = []
        for trial_id, run_ in children.items():
            run_id, tags, params, metrics = (
                run_.info.run_id,
                run_.data.tags,
                run_.data.params,
                run_.data.metrics,
            )
            trial = by_id[trial_id]
            assert tags["mlflow.parentRunId"] == parent.info.run_id
            assert run_.info.status == "FINISHED" and tags["raylora.state"] == "COMPLETE"
            for key, value in trial["params"].items():
                assert params[key] == (json.dumps(value) if isinstance(value, list) else str(value))
            assert params["training.max_steps"] == "4"  # the resolved fixed values too
            for metric in ("eval/loss", "train/loss"):
                assert [m.step for m in client.get_metric_history(run_id, metric)] == [2, 4], metric
            history = client.get_metric_history(run_id, "eval/loss")
            assert len(client.get_metric_history(run_id, "best_eval/loss")) == 1
            assert metrics["best_eval/loss"] == min(m.value for m in history) == trial["value"]
            assert "eval/click_acc" in metrics and "best_eval/click_acc" in metrics
            assert metrics["trainable_params/llm"] > 0
            for folder in ("adapter/best", "adapter/final"):
                names = {a.path for a in client.list_artifacts(run_id, folder)}
                assert f"{folder}/adapter_model.safetensors" in names
            assert {"targets.json", "trial_config.yaml"} <= {a.path for a in client.list_artifacts(run_id)}
            best_values.append(metrics["best_eval/loss"])
        assert parent.data.metrics["best_eval/loss"] == min(best_values)
        return {trial_id: r.info.run_id for trial_id, r in children.items()}

    with mlflow_server(tmp_path / "mlflow", port=int(uri.rsplit(":", 1)[1])):
        again = run(cmd + ["--resume"])
        assert again.returncode == 0, again.stderr[-3000:]
        assert f"sent the {len(kinds)} record(s) an earlier run could not send" in again.stdout, again.stdout
        assert "nothing to do" in again.stdout and not pending.exists()
        client = MlflowClient(tracking_uri=uri)
        run_ids = recorded(client)
        trials = json.loads((study / "summary.json").read_text())["trials"]
        assert {t["trial_id"]: t["mlflow_run_id"] for t in trials} == run_ids
        best = json.loads((study / "summary.json").read_text())["best_trial"]
        assert best["mlflow_run_id"] == run_ids[best["trial_id"]]

        # A replay cut short after MLflow took some records sends them again: nothing is duplicated.
        pending.write_text(json.dumps(saved))
        report = run([sys.executable, "-m", "raylora", "report", str(study)])
        assert report.returncode == 0, report.stderr[-3000:]
        assert "an earlier run could not send" in report.stdout and not pending.exists()
        assert recorded(client) == run_ids
        rule = json.loads((study / "summary.json").read_text())["scheduler"]  # kept by the re-render
        assert rule.startswith(("asha(", "fifo")) and rule in (study / "report" / "index.html").read_text()
