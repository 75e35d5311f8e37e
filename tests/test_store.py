"""A study knows its stores, and reading one never creates or hangs on one (issue 26): the MLflow store is
recorded in spec.json (absolute, without credentials), kept on --resume, made beside the storage by default,
created under a lock; --resume of no study and a study without spec.json are refused; report and promote
refuse a missing store or a dead server in one line; a corrupt adapter is never registered; and a planted
credential is found nowhere a study, its report and its promotion write or print."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from raylora import spec as spec_lib
from raylora.errors import EnvironmentFault, UserError
from raylora.tracking import store

ROOT = Path(__file__).resolve().parents[1]


def _raylora(
    *args: str, cwd: Path, env: dict | None = None, timeout: float = 600
) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "raylora", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env={**os.environ, **(env or {})},
        timeout=timeout,
    )


def _one_line(proc: subprocess.CompletedProcess, code: int, *needles: str) -> str:
    assert proc.returncode == code, (proc.returncode, proc.stdout[-2000:], proc.stderr[-3000:])
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, proc.stderr[-3000:]
    for needle in needles:
        assert needle in errors[0], errors[0]
    return errors[0]


# -- which store (fast) -----------------------------------------------------------------------------


def test_the_default_store_sits_beside_the_storage_and_every_store_is_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert store.default_uri("studies") == f"sqlite:///{tmp_path}/studies/mlflow.db"
    assert store.absolute("sqlite:///rel/m.db") == f"sqlite:///{tmp_path}/rel/m.db"
    assert store.absolute("sqlite:////abs/m.db") == "sqlite:////abs/m.db"
    assert store.absolute("runs") == str(tmp_path / "runs")
    assert store.absolute("http://h:5000") == "http://h:5000"

    from raylora.tracking.tracker import tracking_uri

    spec = spec_lib.build({"study": {"name": "s", "storage": "st"}})
    assert tracking_uri(None, spec) == f"sqlite:///{tmp_path}/st/mlflow.db"
    assert tracking_uri(None, spec, "/elsewhere") == "sqlite:////elsewhere/mlflow.db"
    assert tracking_uri("sqlite:///x.db", spec) == f"sqlite:///{tmp_path}/x.db"


def test_resume_keeps_the_recorded_store_and_another_one_is_a_warning_naming_both():
    lines = []
    recorded = "http://h:5000"
    assert store.for_study(None, recorded, "/st", lines.append) == recorded
    assert store.for_study(None, None, "/st", lines.append) == "sqlite:////st/mlflow.db"
    assert (
        store.for_study("http://u:S3CR3T@h:5000", recorded, "/st", lines.append) == "http://u:S3CR3T@h:5000"
    )
    assert lines == []  # the same store, its credentials given on the command line
    assert store.for_study("http://other:5000", recorded, "/st", lines.append) == "http://other:5000"
    assert len(lines) == 1 and recorded in lines[0] and "http://other:5000" in lines[0]


def test_spec_json_records_the_store_without_credentials(tmp_path):
    from raylora.study import specfile

    spec = spec_lib.build({"study": {"name": "s"}, "tracking": {"tracking_uri": "http://u:S3CR3T@h:5000"}})
    specfile.save(tmp_path, spec, "https://u:S3CR3T@h:5000/?token=T0KEN&x=1")
    text = (tmp_path / "spec.json").read_text()
    assert "S3CR3T" not in text and "T0KEN" not in text
    assert specfile.stored_uri(tmp_path) == "https://h:5000/?x=1"
    specfile.check(tmp_path, spec)  # the redacted spec is still the same study


def test_a_journal_without_spec_json_is_refused_unless_the_spec_is_accepted(tmp_path):
    from raylora.study import specfile

    spec = spec_lib.build({"study": {"name": "s"}})
    specfile.check(tmp_path, spec)  # a new study: nothing to compare
    (tmp_path / "optuna.journal").write_text("")
    with pytest.raises(UserError, match="--accept-spec"):
        specfile.check(tmp_path, spec)
    specfile.check(tmp_path, spec, accept=True)


def test_a_missing_sqlite_store_is_refused_not_created(tmp_path):
    with pytest.raises(UserError, match="no MLflow store at"):
        store.must_exist(f"sqlite:///{tmp_path}/none/mlflow.db")
    assert not (tmp_path / "none").exists()


def test_a_folder_store_is_refused_in_one_line_unless_mlflow_is_told_to_keep_it(tmp_path, monkeypatch):
    """MLflow 3 raises on a folder (file store) URI unless MLFLOW_ALLOW_FILE_STORE is set: raylora says so
    before anything starts, and names the SQLite store to use instead."""
    from raylora.tracking.tracker import check_uri

    monkeypatch.delenv("MLFLOW_ALLOW_FILE_STORE", raising=False)
    for uri in (str(tmp_path / "mlruns"), f"file://{tmp_path}/mlruns", f"file:{tmp_path}/mlruns"):
        with pytest.raises(UserError) as refused:
            check_uri(uri)
        assert refused.value.where == "--tracking-uri"
        assert f"use sqlite:///{tmp_path}/mlruns/mlflow.db" in str(refused.value)
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    check_uri(f"file://{tmp_path}/mlruns")  # the user chose it: only an unwritable folder is refused
    check_uri(f"sqlite:///{tmp_path}/mlflow.db")


def test_mlflow_itself_refuses_a_folder_store_without_its_opt_in(tmp_path, monkeypatch):
    """The premise of the refusal above, checked on the installed MLflow: the day it opens folder stores
    again, this fails and the refusal should go."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    monkeypatch.delenv("MLFLOW_ALLOW_FILE_STORE", raising=False)
    with pytest.raises(MlflowException, match="MLFLOW_ALLOW_FILE_STORE"):
        MlflowClient(f"file://{tmp_path}/mlruns").search_experiments()
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    assert MlflowClient(f"file://{tmp_path}/mlruns").search_experiments() is not None


def test_a_dead_tracking_server_is_one_fault_within_seconds():
    from mlflow_server import free_port

    started = time.monotonic()
    with pytest.raises(EnvironmentFault) as info:
        store.must_answer(f"http://alice:S3CR3T@127.0.0.1:{free_port()}")
    assert time.monotonic() - started < 30
    assert "does not answer" in str(info.value) and "S3CR3T" not in str(info.value)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("down_for_s, tries", [(0.0, 2), (60.0, 1)])
def test_the_end_of_a_study_waits_for_a_store_that_just_went_down_not_for_one_down_all_along(
    tmp_path, down_for_s, tries
):
    """``Tracker.close(wait_s)`` tries again while MLflow has been unreachable for less than ``wait_s``;
    either way what it could not send is saved in the study and said in one line."""
    from mlflow_server import free_port

    from raylora.tracking.storage import open_storage
    from raylora.tracking.tracker import Tracker

    class Counted(Tracker):
        tries = 0

        def flush(self):
            self.tries += 1
            return super().flush()

    said = []
    spec = spec_lib.Spec.from_dict({"study": {"name": "s"}})
    tracker = Counted(spec, f"http://127.0.0.1:{free_port()}", open_storage(str(tmp_path), "s"), said.append)
    metrics = {"write": "metrics", "trial_id": "t000", "step": 2, "values": {"eval/loss": 1.0}}
    tracker.outbox += [{"write": "experiment"}, metrics]
    tracker.offline_since = time.monotonic() - down_for_s if down_for_s else None
    assert tracker.close(wait_s=1.0) is False
    assert tracker.tries == tries
    study = tmp_path / "s"
    assert [line for line in said if "still unreachable" in line] == [
        f"MLflow still unreachable at {tracker.uri}: 2 record(s) saved to {study / 'mlflow_pending.json'}; "
        f"`raylora search --resume` or `raylora report {study}` sends them once it is back"
    ]
    assert json.loads((tmp_path / "s" / "mlflow_pending.json").read_text())["records"] == [metrics]


def test_a_corrupt_adapter_does_not_load_and_a_whole_one_does(tmp_path):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForImageTextToText

    from raylora import builtin
    from raylora.tracking.promote import _RunView, check_adapter

    base = builtin.ensure_tiny_model()
    model = AutoModelForImageTextToText.from_pretrained(base)
    adapter = tmp_path / "adapter"
    get_peft_model(model, LoraConfig(r=4, target_modules=["q_proj", "v_proj"])).save_pretrained(adapter)
    run = _RunView("r1", "FINISHED", {"raylora.trial_id": "t001"}, {}, {})
    check_adapter(adapter, builtin.TINY_MODEL, None, run)
    (adapter / "adapter_model.safetensors").write_bytes(os.urandom(100))
    with pytest.raises(EnvironmentFault, match="the adapter of trial t001 .* does not load"):
        check_adapter(adapter, builtin.TINY_MODEL, None, run)


def test_an_image_that_is_not_a_regular_file_says_so(tmp_path):
    from raylora.data import images
    from raylora.errors import DataError

    fifo = tmp_path / "pipe.png"
    os.mkfifo(fifo)
    (tmp_path / "folder.png").mkdir()
    for name in ("pipe.png", "folder.png", "/dev/zero"):
        with pytest.raises(DataError, match="not a regular file"):
            images.resolve(name, tmp_path, "x.jsonl:1")
    with pytest.raises(DataError, match="image not found"):
        images.resolve("missing.png", tmp_path, "x.jsonl:1")


# -- end to end (slow) ------------------------------------------------------------------------------


def _study_yaml(tmp_path: Path, name: str, num_trials: int = 1) -> Path:
    spec = yaml.safe_load((ROOT / "search_spaces" / "quickstart.yaml").read_text())
    spec["study"].update(
        {"name": name, "num_trials": num_trials, "max_concurrent_trials": 1, "scheduler": {"type": "fifo"}}
    )
    spec["training"].update({"max_steps": 2, "eval_every": 2, "click_eval_samples": 0})
    spec["data"]["eval_samples"] = 4
    spec["search"] = {"training.learning_rate.llm": {"loguniform": [3.0e-4, 3.0e-3]}}
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def test_resume_of_no_study_and_report_of_no_folder_are_one_line_and_make_nothing(
    tmp_path, monkeypatch, raylora_cli
):
    """(A resume from another folder than the first launch keeps one store beside the storage: test_faults'
    one-driver resume study runs its resumes so.)"""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "")
    path = _study_yaml(tmp_path, "moved")
    code, _, err = raylora_cli("search", str(path), "--storage", str(tmp_path / "typo"), "--resume")
    assert (code, err) == (2, f"error: --resume: no study named moved in {tmp_path / 'typo'}\n")
    code, _, err = raylora_cli("report", str(tmp_path / "nowhere"))
    assert code == 2 and err.startswith("error: ") and "no such study folder" in err and err.count("\n") == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["moved.yaml"]


def _schema(path: Path) -> tuple[dict, list]:
    """Each table's and index's definition as a set of lines (MLflow's migrations order a table's
    constraints differently from one store to the next), and the schema version."""
    import sqlite3

    with sqlite3.connect(path) as db:
        rows = db.execute("SELECT type, name, sql FROM sqlite_master WHERE name NOT LIKE 'sqlite_%'")
        found = {
            (kind, name): {ln.strip().rstrip(",") for ln in (sql or "").splitlines()}
            for kind, name, sql in rows
        }
        return found, list(db.execute("SELECT version_num FROM alembic_version"))


def test_a_new_sqlite_store_has_the_schema_mlflow_makes_and_its_own_default_experiment(tmp_path, monkeypatch):
    """A new store starts as a copy of an empty one (MLflow's migrations are paid once): its tables,
    indexes and schema version are those MLflow makes for a store itself, and its Default experiment is
    the one MLflow gives a store opened from this working directory, not the first store's."""
    from mlflow import MlflowClient

    monkeypatch.setenv("RAYLORA_HOME", str(tmp_path / "home"))
    reference = tmp_path / "mlflow_made.db"
    monkeypatch.chdir(tmp_path)
    MlflowClient(tracking_uri=f"sqlite:///{reference}").search_experiments()
    first = store.open_client(f"sqlite:///{tmp_path / 'a' / 'mlflow.db'}")  # makes the empty copy
    (tmp_path / "b").mkdir()
    monkeypatch.chdir(tmp_path / "b")
    second = store.open_client(f"sqlite:///{tmp_path / 'b' / 'mlflow.db'}")  # copied from it
    assert list((tmp_path / "home" / "cache" / "mlflow").glob("empty-*.db"))
    for path in (tmp_path / "a" / "mlflow.db", tmp_path / "b" / "mlflow.db"):
        assert _schema(path) == _schema(reference), path
    for client, where in ((first, tmp_path), (second, tmp_path / "b")):
        (default,) = client.search_experiments()
        assert (default.experiment_id, default.name) == ("0", "Default")
        assert default.artifact_location == str(where / "mlruns" / "0")
    run = second.create_run(second.create_experiment("x"))
    second.log_metric(run.info.run_id, "m", 1.0)
    assert [e.name for e in first.search_experiments()] == ["Default"], "the stores share nothing"


def test_a_cache_that_cannot_hold_the_empty_store_leaves_a_new_store_to_mlflow(tmp_path, monkeypatch):
    from mlflow import MlflowClient

    monkeypatch.setenv("RAYLORA_HOME", str(tmp_path / "home"))
    (tmp_path / "home" / "cache").mkdir(parents=True)
    (tmp_path / "home" / "cache" / "mlflow").write_text("a file where the cache folder goes")
    monkeypatch.chdir(tmp_path)
    client = store.open_client(f"sqlite:///{tmp_path / 'a' / 'mlflow.db'}")
    assert [e.name for e in client.search_experiments()] == ["Default"]
    reference = tmp_path / "mlflow_made.db"
    MlflowClient(tracking_uri=f"sqlite:///{reference}").search_experiments()
    assert _schema(tmp_path / "a" / "mlflow.db") == _schema(reference)
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == [".mlflow.db.lock", "mlflow.db"]


@pytest.mark.slow
def test_concurrent_first_use_of_a_new_sqlite_store_is_safe(tmp_path):
    """Three processes at once on a fresh home: two open one new store, one another; each store works."""
    code = (
        "import sys; from raylora.tracking import store; "
        "print([e.name for e in store.open_client(sys.argv[1]).search_experiments()])"
    )
    uris = [f"sqlite:///{tmp_path}/new/mlflow.db"] * 2 + [f"sqlite:///{tmp_path}/other/mlflow.db"]
    env = {**os.environ, "RAYLORA_HOME": str(tmp_path / "home")}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", code, uri],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )  # fmt: skip
        for uri in uris
    ]
    outs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0], [err[-2000:] for _, err in outs]
    assert [out.strip() for out, _ in outs] == ["['Default']"] * 3


@settings(max_examples=200)
@given(
    st.lists(st.tuples(st.integers(0, 6), st.floats(-5, 5, allow_nan=False)), min_size=0, max_size=20),
    st.randoms(use_true_random=False),
)
def test_a_metric_s_value_at_a_step_is_the_one_logged_last(logged, rng):
    """MLflow keeps every value a run was sent at a step (a resume that passed over a damaged checkpoint
    trains those steps again); the trial's best comes from the value logged last at each step."""
    from mlflow.entities import Metric

    from raylora.tracking.tracker import latest_per_step

    history = [Metric("eval/loss", value, 1000 + i, step) for i, (step, value) in enumerate(logged)]
    rng.shuffle(history)  # MLflow's order is not the order of logging
    expected = {}
    for step, value in logged:  # in logging order: a later value replaces an earlier one
        expected[step] = value
    assert latest_per_step(history) == dict(sorted(expected.items()))
