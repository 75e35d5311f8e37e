"""A study on URI storage: a real S3 server on loopback (moto), real Ray, real MLflow, real PEFT loading."""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.slow  # every test here starts Ray, an MLflow or S3 server, or trains

ROOT = Path(__file__).resolve().parents[1]
CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
}


@pytest.fixture(scope="module")
def s3():
    """A moto S3 server on 127.0.0.1 with the bucket ``bucket``; yields ``(endpoint, filesystem)``."""
    import pyarrow.fs
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one line per request otherwise
    saved = {k: os.environ.get(k) for k in CREDENTIALS}
    os.environ.update(CREDENTIALS)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"{host}:{port}"
    filesystem = pyarrow.fs.S3FileSystem(
        endpoint_override=endpoint, scheme="http", region="us-east-1", allow_bucket_creation=True
    )
    filesystem.create_dir("bucket")
    try:
        yield endpoint, filesystem
    finally:
        server.stop()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _spec(tmp_path: Path) -> Path:
    spec = yaml.safe_load((ROOT / "search_spaces" / "quickstart.yaml").read_text())
    spec["study"].update(
        {"name": "qs", "num_trials": 2, "max_concurrent_trials": 1, "scheduler": {"type": "fifo"}}
    )
    # 30 steps: warm workers train a few steps per second, and the kill must land mid-trial. An evaluation
    # (and its checkpoint, sent to the bucket) every 6: 131.6 s against 147.6 s with one every 2.
    spec["training"].update({"max_steps": 30, "eval_every": 6, "click_eval_samples": 0})
    spec["data"]["eval_samples"] = 4
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def _optuna_trials(fs, local: Path) -> list:
    """The study's Optuna trials, read from a copy (at ``local``) of its journal in the bucket."""
    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    local.write_bytes(_read(fs, "bucket/studies/qs/optuna.journal"))
    journal = JournalStorage(JournalFileBackend(str(local)))
    return optuna.load_study(study_name="qs", storage=journal).get_trials()


def _raylora(*args: str) -> list[str]:
    return [sys.executable, "-m", "raylora", *args]


def _read(filesystem, path: str) -> bytes:
    with filesystem.open_input_stream(path) as f:
        return f.read()


def test_study_on_s3_checkpoints_adapters_mlflow_and_resume_from_a_fresh_machine(s3, tmp_path):
    import pyarrow.fs

    endpoint, fs = s3
    storage = f"s3://bucket/studies?endpoint_override={endpoint}&scheme=http"
    tracking = f"sqlite:///{tmp_path / 'mlflow.db'}"
    spec = _spec(tmp_path)
    cmd = _raylora("search", str(spec), "--storage", storage, "--tracking-uri", tracking)
    env = {**os.environ, **CREDENTIALS}

    # Interrupt the study once the second trial has a checkpoint in the bucket.
    log = open(tmp_path / "first.log", "w")
    driver = subprocess.Popen(
        cmd, cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )
    try:
        deadline = time.monotonic() + 300
        while True:
            time.sleep(0.1)
            info = fs.get_file_info("bucket/studies/qs/summary.json")
            if info.type == pyarrow.fs.FileType.File:
                try:
                    trials = json.loads(_read(fs, info.path))["trials"]
                except ValueError:  # a torn read: bad JSON, or stray bytes that are not even UTF-8
                    continue  # (pyarrow reads the size the object had when the stream was opened)
                if len(trials) == 2 and trials[1]["steps"] >= 2:
                    break
            assert time.monotonic() < deadline and driver.poll() is None, (tmp_path / "first.log").read_text()
    finally:
        os.killpg(driver.pid, signal.SIGKILL)  # the driver and the local Ray it started
        driver.wait()
    first = (tmp_path / "first.log").read_text()
    assert f"storage: s3://bucket/studies/qs (local copy {os.environ['RAYLORA_HOME']}" in first, first
    killed = [t.state.name for t in _optuna_trials(fs, tmp_path / "killed.journal")]
    assert killed == ["COMPLETE", "RUNNING"], killed  # as the kill left them: unfinished, not failed

    # A fresh machine: no local copy of the study at all.
    shutil.rmtree(Path(os.environ["RAYLORA_HOME"]) / "studies")
    busy = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert busy.returncode == 2 and "already exists" in busy.stderr and "--resume" in busy.stderr
    shutil.rmtree(Path(os.environ["RAYLORA_HOME"]) / "studies")
    proc = subprocess.run(
        cmd + ["--resume"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "resuming t001" in proc.stdout and "summary: s3://bucket/studies/qs/summary.json" in proc.stdout

    # The study's state is in the bucket.
    summary = json.loads(_read(fs, "bucket/studies/qs/summary.json"))
    t000, t001 = summary["trials"]
    assert [t000["state"], t001["state"]] == ["COMPLETE", "COMPLETE"], (
        json.dumps([t000, t001]) + proc.stdout[-3000:]
    )
    assert t000["resumed_from_step"] is None, "the finished trial was not run again"
    assert t001["steps"] == 30 and t001["resumed_from_step"] >= 2, "resumed from its checkpoint in S3"
    states = [t.state.name for t in _optuna_trials(fs, tmp_path / "optuna.journal")]
    assert states == ["COMPLETE", "FAIL", "COMPLETE"]  # t001's killed attempt was failed on resume
    assert b"| t001 | COMPLETE |" in _read(fs, "bucket/studies/qs/report/leaderboard.md")

    # The best adapter is in the bucket and loads with vanilla PEFT.
    from peft import PeftModel
    from transformers import AutoModelForImageTextToText

    from raylora import builtin

    best = summary["best_trial"]["adapter_path"]
    assert best.startswith("s3://bucket/studies/qs/runs/") and best.endswith("/adapter"), best
    local = tmp_path / "best_adapter"
    local.mkdir()
    pyarrow.fs.copy_files(best.removeprefix("s3://"), str(local), source_filesystem=fs)
    base = AutoModelForImageTextToText.from_pretrained(builtin.resolve_model(builtin.TINY_MODEL))
    model = PeftModel.from_pretrained(base, str(local))
    assert any("lora_A" in name for name, _ in model.named_parameters())

    # MLflow: one run per trial, each with both adapters, downloaded from the bucket; no secrets anywhere.
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=tracking)
    runs = client.search_runs([client.get_experiment_by_name("qs").experiment_id])
    parent = next(r for r in runs if r.data.tags["raylora.role"] == "study")
    assert (
        parent.data.tags["raylora.study_dir"]
        == f"s3://bucket/studies/qs?endpoint_override={endpoint}&scheme=http"
    )
    children = [r for r in runs if r.data.tags["raylora.role"] == "trial"]
    assert sorted(r.data.tags["raylora.trial_id"] for r in children) == ["t000", "t001"]
    for run in children:
        assert run.info.status == "FINISHED"
        for folder in ("adapter/best", "adapter/final"):
            names = {a.path for a in client.list_artifacts(run.info.run_id, folder)}
            assert f"{folder}/adapter_model.safetensors" in names, (folder, names)
        assert run.data.metrics["trainable_params/llm"] > 0
        # One run holds both attempts of the killed trial: each evaluation, to the last step.
        steps = [m.step for m in client.get_metric_history(run.info.run_id, "eval/loss")]
        assert sorted(set(steps)) == list(range(6, 31, 6)), (run.data.tags["raylora.trial_id"], steps)
    logged = json.dumps([r.to_dictionary() for r in runs])
    assert "testing" not in logged and "AWS_" not in logged

    # `raylora report` works from the URI alone, and `raylora promote` from MLflow alone.
    report = subprocess.run(
        _raylora("report", parent.data.tags["raylora.study_dir"]),
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert report.returncode == 0 and "| t001 | COMPLETE |" in report.stdout, report.stderr[-2000:]
    promote = subprocess.run(
        _raylora("promote", "best", "--tracking-uri", tracking),
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert promote.returncode == 0 and f"trial {summary['best_trial']['trial_id']}" in promote.stdout, (
        promote.stderr[-2000:]
    )


def test_missing_bucket_is_one_line_and_exit_2(s3, tmp_path):
    endpoint, _ = s3
    storage = f"s3://no-such-bucket/studies?endpoint_override={endpoint}&scheme=http"
    proc = subprocess.run(
        _raylora("search", str(_spec(tmp_path)), "--storage", storage),
        cwd=tmp_path,
        env={**os.environ, **CREDENTIALS},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert lines == [
        f"error: --storage: s3://no-such-bucket/studies/qs?endpoint_override={endpoint}&scheme=http: "
        "bucket 'no-such-bucket' does not exist"
    ]


def test_storage_uris_never_carry_credentials_into_mlflow():
    from raylora.redact import scrub
    from raylora.tracking.storage import open_storage

    uri = "s3://AKIA:s3cr3t@bucket/p?endpoint_override=host:9000&secret_key=s3cr3t&scheme=http"
    assert scrub({"study.storage": uri}) == {
        "study.storage": "s3://bucket/p?endpoint_override=host:9000&scheme=http"
    }
    storage = open_storage("s3://AKIA:s3cr3t@bucket/p?endpoint_override=host:9000&scheme=http", "s")
    assert storage.location == "s3://bucket/p/s?endpoint_override=host:9000&scheme=http"


def test_state_a_failed_upload_kept_locally_is_uploaded_before_anything_is_downloaded(s3):
    import boto3

    from raylora.tracking.storage import open_storage

    endpoint, fs = s3
    root = f"s3://flaky/studies?endpoint_override={endpoint}&scheme=http"
    bucket = boto3.client("s3", endpoint_url=f"http://{endpoint}", region_name="us-east-1")
    bucket.create_bucket(Bucket="flaky")
    lines = []
    first = open_storage(root, "s", lines.append)
    first.pull()
    (first.directory / "summary.json").write_text('{"v": 1}')
    assert first.push()
    bucket.delete_object(Bucket="flaky", Key="studies/s/summary.json")
    bucket.delete_bucket(Bucket="flaky")  # the storage goes away mid-study
    (first.directory / "summary.json").write_text('{"v": 2}')
    assert not first.push() and "kept in" in lines[-1]

    bucket.create_bucket(Bucket="flaky")
    again = open_storage(root, "s", lines.append)
    again.pull()  # a new run on this machine: the newer local state is not overwritten
    assert _read(fs, "flaky/studies/s/summary.json") == b'{"v": 2}'
    assert (again.directory / "summary.json").read_text() == '{"v": 2}'
    assert "uploading the study's state an earlier run kept" in lines[-1]


def test_state_files_are_read_whole_while_a_running_study_rewrites_them(s3):
    from raylora.tracking.storage import read_whole

    _, fs = s3
    path = "bucket/rewritten/summary.json"
    with fs.open_output_stream(path) as f:
        f.write(b'{"value": 6.8549194335}')

    class Rewriting:
        """The real S3 filesystem, with the study saving a shorter summary just after a read opens."""

        rewritten = False

        def open_input_stream(self, p):
            stream = fs.open_input_stream(p)
            if not self.rewritten:
                with fs.open_output_stream(p) as f:
                    f.write(b'{"value": 6.85}')
                self.rewritten = True
            return stream

        def get_file_info(self, p):
            return fs.get_file_info(p)

    assert read_whole(Rewriting(), path) == b'{"value": 6.85}'
