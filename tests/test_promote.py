"""Promotion against real MLflow stores (SQLite, and one real ``mlflow server``) with real tiny adapters."""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from raylora import builtin
from raylora import spec as spec_lib
from raylora.errors import NothingToDo, UserError
from raylora.tracking import promote
from raylora.train import LocalSession, train

ROOT = Path(__file__).resolve().parents[1]
QUICKSTART = ROOT / "search_spaces" / "quickstart.yaml"
FAST = ["training.max_steps=2", "training.eval_every=2", "training.click_eval_samples=0"]
STUDY = "quickstart"


# -- fixtures ----------------------------------------------------------------------------------------


SCOPES = {"llm": "[llm]", "llm_vision": "[llm, vision]"}


@pytest.fixture(scope="session")
def adapters(raylora_home, built_once, small_eval_file) -> dict[str, Path]:
    """Two tiny trained adapters, trained once for the session: LoRA on [llm] and on [llm, vision]."""

    def trials(root: Path) -> None:
        for name, scope in SCOPES.items():
            overrides = [*FAST, f"training.lora.scope={scope}", f"data.eval={small_eval_file}"]
            train(spec_lib.load(QUICKSTART, overrides), LocalSession(root / name, log=lambda line: None))

    root = built_once("promote-adapters", trials)
    return {name: root / name for name in SCOPES}


def _make_study(
    uri: str, adapters: dict[str, Path], artifact_location: str | None = None, trials=None
) -> dict:
    """An experiment as raylora's search driver writes it: a study run and one child run per trial."""
    from mlflow import MlflowClient
    from mlflow.entities import Param

    client = MlflowClient(uri)
    experiment_id = client.create_experiment(STUDY, artifact_location=artifact_location)
    spec = spec_lib.load(QUICKSTART, FAST)
    study_tags = {
        "raylora.role": "study",
        "raylora.study": STUDY,
        "raylora.objective.metric": "eval/loss",
        "raylora.objective.mode": "min",
    }
    parent = client.create_run(experiment_id, run_name=STUDY, tags=study_tags)
    params = [Param(key, str(value)) for key, value in spec.flat().items()]
    client.log_batch(parent.info.run_id, params=params)
    fingerprint = hashlib.sha256(Path(builtin.resolve_data("builtin:gui-grounding", "train")).read_bytes())
    trials = trials or [
        ("t001", "COMPLETE", 1.0, "llm"),
        ("t002", "COMPLETE", 0.5, "llm_vision"),
        ("t003", "PRUNED", 0.1, "llm"),
    ]
    ids = {}
    for trial_id, state, best, adapter in trials:
        tags = {
            "mlflow.parentRunId": parent.info.run_id,
            "raylora.role": "trial",
            "raylora.study": STUDY,
            "raylora.trial_id": trial_id,
            "raylora.state": state,
            "raylora.base_model": "builtin:tiny-qwen3-vl",
            "raylora.dataset_fingerprint": fingerprint.hexdigest(),
        }
        run_id = client.create_run(experiment_id, run_name=trial_id, tags=tags).info.run_id
        client.log_param(run_id, "training.lora.scope", adapter)
        for step in (1, 2):
            client.log_metric(run_id, "train/loss", 7.0 - step, step=step)
        client.log_metric(run_id, "eval/loss", best, step=2)
        client.log_metric(run_id, "best_eval/loss", best)
        client.log_artifacts(run_id, str(adapters[adapter] / "adapter"), "adapter/best")
        client.log_artifact(run_id, str(adapters[adapter] / "targets.json"))
        client.set_terminated(run_id, "FINISHED" if state in ("COMPLETE", "PRUNED") else "FAILED")
        ids[trial_id] = run_id
    client.set_terminated(parent.info.run_id, "FINISHED")
    return ids


@pytest.fixture(scope="module")
def blank_db(tmp_path_factory) -> Path:
    """An empty MLflow SQLite database, migrated once: creating one costs seconds, copying it nothing."""
    from mlflow import MlflowClient

    path = tmp_path_factory.mktemp("blank") / "mlflow.db"
    client = MlflowClient(f"sqlite:///{path}")
    client.search_experiments()
    client.search_registered_models()
    return path


@pytest.fixture
def sqlite_uri(blank_db, tmp_path) -> str:
    """A fresh SQLite store of this test's own."""
    shutil.copy(blank_db, tmp_path / "mlflow.db")
    return f"sqlite:///{tmp_path}/mlflow.db"


@pytest.fixture
def study(sqlite_uri, adapters, tmp_path) -> dict:
    """A study in a fresh SQLite store; returns the trial run ids by trial id."""
    return _make_study(sqlite_uri, adapters, artifact_location=(tmp_path / "artifacts").as_uri())


def _png() -> str:
    train_file = Path(builtin.resolve_data("builtin:gui-grounding", "train"))
    return str(train_file.parent / "shots" / "0.png")


# -- select_best, pure --------------------------------------------------------------------------------


def _run(trial_id, value, state="COMPLETE", status="FINISHED", role="trial", metric="best_eval/loss"):
    tags = {"raylora.role": role, "raylora.state": state, "raylora.trial_id": trial_id}
    metrics = {} if value is None else {metric: value}
    return {"run_id": f"run-{trial_id}", "status": status, "tags": tags, "metrics": metrics}


def test_select_best_by_mode_with_ties_to_the_lowest_trial_id():
    runs = [_run("t10", 0.5), _run("t9", 0.5), _run("t2", 0.7), _run("t11", 0.7)]
    assert promote.select_best(runs, "eval/loss", "min")["run_id"] == "run-t9"
    assert promote.select_best(runs, "eval/loss", "max")["run_id"] == "run-t2"
    assert promote.select_best(runs, "best_eval/loss", "min")["run_id"] == "run-t9"


def test_select_best_ignores_pruned_failed_unfinished_and_non_trials():
    runs = [
        _run("t1", 0.9),
        _run("t2", 0.1, state="PRUNED"),
        _run("t3", 0.1, state="FAILED", status="FAILED"),
        _run("t4", 0.1, state="INFEASIBLE"),
        _run("t5", 0.1, status="RUNNING"),
        _run("t6", 0.1, role="study"),
        _run("t7", None),
        _run("t8", math.nan),
        _run("t9", 0.1, metric="best_eval/click_acc"),
    ]
    assert promote.select_best(runs, "eval/loss", "min")["run_id"] == "run-t1"


def test_select_best_with_no_finished_trial_raises_nothing_to_do():
    runs = [_run("t1", 0.1, state="PRUNED"), _run("t2", 0.2, state="FAILED", status="FAILED")]
    with pytest.raises(NothingToDo, match=r"best_eval/loss; trials: 1 FAILED, 1 PRUNED"):
        promote.select_best(runs, "eval/loss", "min")
    with pytest.raises(NothingToDo, match="no trial runs"):
        promote.select_best([], "eval/loss", "min")
    with pytest.raises(UserError, match="--mode"):
        promote.select_best(runs, "eval/loss", "lowest")


# -- promotion on SQLite -------------------------------------------------------------------------------


def test_promote_registers_the_best_complete_trial_once(sqlite_uri, study):
    from mlflow import MlflowClient

    client = MlflowClient(sqlite_uri)
    before = client.get_run(study["t002"]).info
    result = promote.promote_best(experiment=STUDY, tracking_uri=sqlite_uri, model_name="clicker")

    assert (result.version, result.alias, result.trial_id, result.value) == ("1", "champion", "t002", 0.5)
    assert result.run_id == study["t002"], "the pruned t003 (0.1) must not win"
    version = client.get_model_version_by_alias("clicker", "champion")
    assert (str(version.version), version.run_id) == ("1", study["t002"])
    assert version.tags == {
        "raylora.study": STUDY,
        "raylora.trial_id": "t002",
        "raylora.base_model": "builtin:tiny-qwen3-vl",
        "raylora.dataset_fingerprint": client.get_run(study["t002"]).data.tags["raylora.dataset_fingerprint"],
        "raylora.objective.metric": "eval/loss",
        "raylora.objective.mode": "min",
        "raylora.objective.value": "0.5",
        "raylora.promotion.policy": "best",
    }
    after = client.get_run(study["t002"]).info
    assert (after.status, after.end_time) == (before.status, before.end_time), "the trial's record is kept"

    again = promote.promote_best(experiment=STUDY, tracking_uri=sqlite_uri, model_name="clicker")
    assert (again.version, again.run_id) == ("1", study["t002"])
    assert [str(v.version) for v in client.search_model_versions("name = 'clicker'")] == ["1"]
    elsewhere = promote.promote_best(experiment=STUDY, tracking_uri=sqlite_uri, model_name="clicker-b")
    assert client.get_model_version("clicker-b", elsewhere.version).run_id == study["t002"]
    experiment_id = client.get_experiment_by_name(STUDY).experiment_id
    logged = client.search_logged_models(experiment_ids=[experiment_id])
    assert [(m.name, m.source_run_id) for m in logged] == [("model", study["t002"])]


def test_the_adapter_check_before_registering_prints_no_warning(adapters):
    """``promote`` loads the adapter with vanilla PEFT before it registers anything; PEFT reads
    transformers' deprecated ``is_gradient_checkpointing`` there, and every promotion printed that
    FutureWarning to the user."""
    import warnings

    nobody = promote._RunView(None, None, {}, {}, {})
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        promote.check_adapter(adapters["llm_vision"] / "adapter", None, None, nobody)
    assert [str(w.message) for w in caught if issubclass(w.category, FutureWarning)] == []


def test_champion_pyfunc_generates_one_string_per_row(sqlite_uri, study):
    import mlflow
    import pandas as pd

    promote.promote_best(experiment=STUDY, tracking_uri=sqlite_uri, model_name="clicker")
    mlflow.set_tracking_uri(sqlite_uri)
    model = mlflow.pyfunc.load_model("models:/clicker@champion")
    rows = pd.DataFrame({"image": [_png()], "instruction": ["click the OK button"]})
    answers = model.predict(rows, params={"max_new_tokens": 8})
    assert isinstance(answers, list) and len(answers) == 1 and isinstance(answers[0], str)


# Hide this checkout's raylora (its editable-install finder and the repository on sys.path) and run
# MLflow's own command line: what a machine without raylora installed does with the promoted model.
_WITHOUT_RAYLORA = """
import sys
sys.meta_path[:] = [f for f in sys.meta_path if "editable" not in repr(f).lower()]
sys.path[:] = [p for p in sys.path if p not in ("", ".") and "raylora" not in p]
try:
    import raylora
except ImportError:
    pass
else:
    raise SystemExit(f"raylora is still importable from {raylora.__file__}")
from mlflow.cli import cli
sys.argv[0] = "mlflow"
cli()
"""


@pytest.mark.slow
def test_promoted_model_carries_its_code_and_serves_without_raylora_installed(sqlite_uri, study, tmp_path):
    import mlflow
    import yaml

    promote.promote_best(experiment=STUDY, tracking_uri=sqlite_uri, model_name="clicker")
    local = Path(mlflow.artifacts.download_artifacts("models:/clicker@champion", tracking_uri=sqlite_uri))
    mlmodel = yaml.safe_load((local / "MLmodel").read_text())
    assert mlmodel["flavors"]["python_function"]["code"] == "code"
    assert (local / "code" / "raylora" / "tracking" / "serving.py").is_file()
    requirements = (local / "requirements.txt").read_text().splitlines()
    assert not any(r.startswith("raylora") for r in requirements), requirements
    assert any(r.startswith("peft==") for r in requirements) and any(
        r.startswith("torch==") for r in requirements
    )

    rows = tmp_path / "rows.json"
    rows.write_text(
        json.dumps(
            {
                "dataframe_split": {
                    "columns": ["image", "instruction"],
                    "data": [[_png(), "click the OK button"]],
                }
            }
        )
    )
    out = tmp_path / "out.json"
    cmd = [
        sys.executable,
        "-c",
        _WITHOUT_RAYLORA,
        "models",
        "predict",
        "-m",
        "models:/clicker@champion",
        "-i",
        str(rows),
        "-o",
        str(out),
        "--env-manager",
        "local",
    ]
    env = {**os.environ, "MLFLOW_TRACKING_URI": sqlite_uri}
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    answers = json.loads(out.read_text())["predictions"]
    assert len(answers) == 1 and isinstance(answers[0], str)


def test_merged_export_matches_base_plus_adapter(sqlite_uri, study, adapters, tmp_path):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from raylora.train import encode, loader

    out = tmp_path / "merged"
    result = promote.promote_best(
        experiment=STUDY, tracking_uri=sqlite_uri, model_name="clicker", merge_dir=out
    )
    assert result.merged_dir == out and list(out.glob("*.safetensors")) and not list(out.glob("*.bin"))

    merged = AutoModelForImageTextToText.from_pretrained(out).eval()
    assert not [name for name, _ in merged.named_parameters() if "lora" in name]
    base = AutoModelForImageTextToText.from_pretrained(builtin.resolve_model(builtin.TINY_MODEL))
    reference = PeftModel.from_pretrained(base, adapters["llm_vision"] / "adapter").eval()

    processor = AutoProcessor.from_pretrained(out)
    image_kw = encode.image_kwargs(4096, 65536, processor)
    split = loader.open_split(
        builtin.resolve_data(builtin.GUI_DATA, "eval"), processor, 512, image_kw, limit=2
    )
    batch = encode.collate(list(split.items), processor.tokenizer.pad_token_id)
    batch.pop("labels")
    with torch.no_grad():
        expected = reference(**batch).logits
        actual = merged(**batch).logits
        with reference.disable_adapter():
            untrained = reference(**batch).logits
    torch.testing.assert_close(actual, expected, atol=1e-4, rtol=0)
    assert not torch.allclose(untrained, expected, atol=1e-6), "the adapter changes nothing: vacuous test"


def test_merging_a_4bit_trial_is_refused_before_anything_is_registered(sqlite_uri, study, tmp_path):
    from mlflow import MlflowClient

    client = MlflowClient(sqlite_uri)
    client.log_param(study["t002"], "training.quantization", "nf4")
    with pytest.raises(UserError, match=r"--merge: trial t002 trained its adapter on a 4-bit \(nf4\) base"):
        promote.promote_best(
            experiment=STUDY, tracking_uri=sqlite_uri, model_name="clicker", merge_dir=tmp_path / "m"
        )
    assert client.search_model_versions("name = 'clicker'") == []


def test_missing_experiment_is_nothing_to_do(sqlite_uri):
    with pytest.raises(
        NothingToDo, match=re.escape(f"--experiment: no MLflow experiment named 'nope' at {sqlite_uri}")
    ):
        promote.promote_best(experiment="nope", tracking_uri=sqlite_uri, model_name="clicker")


def test_experiment_without_a_complete_trial_is_nothing_to_do(sqlite_uri, adapters, tmp_path):
    trials = [("t001", "PRUNED", 0.3, "llm"), ("t002", "FAILED", 0.2, "llm")]
    _make_study(sqlite_uri, adapters, (tmp_path / "artifacts").as_uri(), trials=trials)
    with pytest.raises(NothingToDo, match="no finished trial"):
        promote.promote_best(experiment=STUDY, tracking_uri=sqlite_uri, model_name="clicker")


def test_another_metric_needs_its_mode(sqlite_uri, study):
    with pytest.raises(UserError, match="--mode: give min or max for eval/click_acc"):
        promote.promote_best(
            experiment=STUDY, tracking_uri=sqlite_uri, metric="eval/click_acc", model_name="clicker"
        )


# -- promotion by policy: the cheapest trial within a tolerance of the best ---------------------------------


def _priced(trial_id, value, memory, state="COMPLETE"):
    run = _run(trial_id, value, state=state)
    run["metrics"]["cost/peak_mem_gb"] = memory
    return run


def test_cheapest_within_picks_the_cheapest_trial_close_enough_to_the_best():
    runs = [
        _priced("t1", 0.50, 9.0),
        _priced("t2", 0.55, 4.0),
        _priced("t3", 0.70, 1.0),
        _priced("t4", 0.40, 0.5, state="PRUNED"),
    ]
    pick = promote.select_cheapest_within
    assert pick(runs, "eval/loss", "min", 0.0, "cost/peak_mem_gb")["run_id"] == "run-t1"
    assert pick(runs, "eval/loss", "min", 0.05, "cost/peak_mem_gb")["run_id"] == "run-t2"
    assert pick(runs, "eval/loss", "min", 0.2, "cost/peak_mem_gb")["run_id"] == "run-t3"
    # max: the best is 0.70; within 0.16 are t3 (0.70) and t2 (0.55); t2 is not cheaper than t3
    assert pick(runs, "eval/loss", "max", 0.16, "cost/peak_mem_gb")["run_id"] == "run-t3"
    assert pick(runs, "eval/loss", "max", 0.20, "cost/peak_mem_gb")["run_id"] == "run-t3"
    with pytest.raises(NothingToDo, match="reports cost/accelerator_hours"):
        pick(runs, "eval/loss", "min", 0.2, "cost/accelerator_hours")


@pytest.mark.parametrize(
    ("policy", "message"),
    [
        (promote.Policy("cheapest"), "--policy: must be one of best, cheapest-within"),
        (promote.Policy("cheapest-within"), "--tolerance: cheapest-within needs a tolerance >= 0"),
        (promote.Policy("cheapest-within", -1.0), "--tolerance: cheapest-within needs a tolerance >= 0"),
        (promote.Policy("best", 0.1), "--tolerance: applies to --policy cheapest-within only"),
        (promote.Policy("cheapest-within", 0.1, "gpu"), "--cost: must be one of cost/peak_mem_gb"),
    ],
)
def test_a_bad_policy_is_a_user_error(policy, message):
    with pytest.raises(UserError, match=re.escape(message)):
        policy.check()


def test_cheapest_within_promotes_and_records_the_policy(sqlite_uri, study):
    from mlflow import MlflowClient

    client = MlflowClient(sqlite_uri)
    for trial_id, memory in [("t001", 1.0), ("t002", 2.0), ("t003", 0.5)]:
        client.log_metric(study[trial_id], "cost/peak_mem_gb", memory, step=2)
    first = promote.promote_best(experiment=STUDY, tracking_uri=sqlite_uri, model_name="clicker")
    assert first.trial_id == "t002"

    # t001 (1.0) is 0.5 from the best (t002, 0.5): outside 0.4, so the best itself is the cheapest
    near = promote.Policy("cheapest-within", 0.4, "cost/peak_mem_gb")
    again = promote.promote_best(experiment=STUDY, tracking_uri=sqlite_uri, model_name="clicker", policy=near)
    assert (again.version, again.trial_id, again.cost) == ("1", "t002", 2.0)
    tags = client.get_model_version("clicker", "1").tags
    assert tags["raylora.promotion.policy"] == "cheapest-within", "a reused version says how it was chosen"
    assert tags["raylora.promotion.tolerance"] == "0.4"

    wide = promote.Policy("cheapest-within", 0.6, "cost/peak_mem_gb")
    cheap = promote.promote_best(experiment=STUDY, tracking_uri=sqlite_uri, model_name="clicker", policy=wide)
    assert (cheap.version, cheap.trial_id, cheap.value, cheap.cost) == ("2", "t001", 1.0, 1.0)
    assert (cheap.best_trial_id, cheap.best_value) == ("t002", 0.5)
    version = client.get_model_version_by_alias("clicker", "champion")
    assert (str(version.version), version.run_id) == ("2", study["t001"])
    assert {k: v for k, v in version.tags.items() if k.startswith("raylora.promotion.")} == {
        "raylora.promotion.policy": "cheapest-within",
        "raylora.promotion.tolerance": "0.6",
        "raylora.promotion.cost_metric": "cost/peak_mem_gb",
        "raylora.promotion.cost_value": "1.0",
        "raylora.promotion.best_trial": "t002",
        "raylora.promotion.best_value": "0.5",
    }
    assert version.tags["raylora.trial_id"] == "t001"


# -- promotion through a real tracking server -----------------------------------------------------------


@pytest.fixture
def server_uri(blank_db, tmp_path):
    """A real ``mlflow server`` on loopback (SQLite backend, proxied artifacts), stopped at teardown."""
    shutil.copy(blank_db, tmp_path / "server.db")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    command = [
        sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
        "--backend-store-uri", f"sqlite:///{tmp_path}/server.db",
        "--artifacts-destination", str(tmp_path / "server-artifacts"),
        "--workers", "1",
    ]  # fmt: skip
    log = (tmp_path / "server.log").open("w")
    # Its own session, so teardown stops the server and the workers it forks, and nothing else.
    # No job runner: it forks a pool of huey consumers this test has no use for.
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    server = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, env=env)
    uri = f"http://127.0.0.1:{port}"
    try:
        _wait_healthy(uri, server, tmp_path / "server.log")
        yield uri
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()
        log.close()


def _wait_healthy(uri: str, server: subprocess.Popen, log: Path, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            pytest.fail(f"mlflow server exited with {server.returncode}:\n{log.read_text()[-2000:]}")
        try:
            with urllib.request.urlopen(f"{uri}/health", timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.3)
    pytest.fail(f"mlflow server not healthy after {timeout}s:\n{log.read_text()[-2000:]}")


@pytest.mark.slow
def test_promote_and_load_through_a_tracking_server(server_uri, adapters):
    import mlflow
    import pandas as pd
    from mlflow import MlflowClient

    study = _make_study(server_uri, adapters)
    result = promote.promote_best(experiment=STUDY, tracking_uri=server_uri, model_name="clicker")
    again = promote.promote_best(experiment=STUDY, tracking_uri=server_uri, model_name="clicker")

    assert (result.version, result.run_id) == ("1", study["t002"]) and again.version == "1"
    client = MlflowClient(server_uri)
    assert client.get_model_version_by_alias("clicker", "champion").run_id == study["t002"]
    mlflow.set_tracking_uri(server_uri)
    model = mlflow.pyfunc.load_model("models:/clicker@champion")
    answers = model.predict(pd.DataFrame({"image": [_png()], "instruction": ["click the OK button"]}))
    assert len(answers) == 1 and isinstance(answers[0], str)
