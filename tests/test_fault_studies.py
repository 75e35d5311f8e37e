"""Round 3 of faults end to end (slow: real Ray, Optuna, MLflow and PEFT through the CLI): a diverged trial
fails and never wins, and a killed pool actor or a stopped worker costs a trial only its steps since a
checkpoint. (SIGTERM, Ctrl-C and an emptied checkpoint: test_faults' signal study.)"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from test_faults import ROOT, _assert_adapters_exist, _raylora, _search_args, _summary, _write_spec


def _strict(path: Path) -> dict:
    def refuse(token):
        raise AssertionError(f"{path} holds {token}: not JSON")

    return json.loads(path.read_text(), parse_constant=refuse)


@pytest.mark.slow
def test_a_diverged_trial_fails_is_never_the_best_and_promote_agrees(tmp_path):
    spec = _write_spec(
        tmp_path / "study.yaml",
        study={"enqueue": [{"training.learning_rate.llm": 1.0e30}, {"training.learning_rate.llm": 1.0e-3}]},
        training={"max_steps": 4, "eval_every": 2},
        search={"training.learning_rate.llm": {"choice": [1.0e30, 1.0e-3]}},
    )
    storage = tmp_path / "st"
    proc = _raylora(*_search_args(spec, storage))
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = _strict(storage / "s" / "summary.json")
    trials = {t["trial_id"]: t for t in summary["trials"]}
    assert trials["t000"]["state"] == "FAILED" and "loss became NaN at step" in trials["t000"]["error"]
    assert trials["t000"]["value"] is None
    assert trials["t001"]["state"] == "COMPLETE"
    assert summary["best_trial"]["trial_id"] == "t001"
    assert (Path(summary["best_trial"]["adapter_path"]) / "adapter_model.safetensors").is_file()
    assert "best: t001" in proc.stdout
    _assert_adapters_exist(summary)

    import optuna

    study = optuna.load_study(
        study_name="s",
        storage=optuna.storages.JournalStorage(
            optuna.storages.journal.JournalFileBackend(str(storage / "s" / "optuna.journal"))
        ),
    )
    assert [t.state.name for t in study.trials] == ["FAIL", "COMPLETE"]
    promoted = _raylora(
        "promote", "best", "--experiment", "s", "--tracking-uri", f"sqlite:///{storage}/mlflow.db"
    )
    assert promoted.returncode == 0, promoted.stderr[-3000:]
    assert "t001" in promoted.stdout, promoted.stdout


def _wait_for(driver: subprocess.Popen, study_dir: Path, condition, timeout_s: float = 300) -> None:
    """Wait until ``condition(summary trials)`` holds while the driver runs."""
    deadline = time.monotonic() + timeout_s
    while not ((study_dir / "summary.json").is_file() and condition(_summary(study_dir)["trials"])):
        if time.monotonic() > deadline or driver.poll() is not None:
            raise AssertionError(f"exit {driver.poll()}: {_summary(study_dir)}")
        time.sleep(0.1)


def _run_until(args: list[str], study_dir: Path, steps: int, env: dict | None = None) -> subprocess.Popen:
    driver = subprocess.Popen(
        [sys.executable, "-m", "raylora", *args],
        cwd=ROOT,
        env={**os.environ, **(env or {})},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        _wait_for(driver, study_dir, lambda trials: trials[0]["steps"] >= steps)
    except AssertionError:
        os.killpg(driver.pid, signal.SIGKILL)
        raise AssertionError(driver.communicate()[1][-3000:]) from None
    return driver


def _descendant(pid: int, name: str) -> int:
    """The process below ``pid`` whose command line names ``name`` (a Ray actor's process title)."""
    from raylora.study.reaper import descendants

    for child in descendants(pid):
        try:
            if name in Path(f"/proc/{child}/cmdline").read_text():
                return child
        except OSError:
            continue
    raise AssertionError(f"no {name} below {pid}")


def _signal_descendant_and_wait(driver, name: str, sig) -> tuple[str, str]:
    """Send ``sig`` to the driver's descendant process ``name`` and wait for the driver to end (its whole
    process group is killed if it has not within 600 s)."""
    try:
        os.kill(_descendant(driver.pid, name), sig)
        return driver.communicate(timeout=600)
    finally:
        if driver.poll() is None:
            os.killpg(driver.pid, signal.SIGKILL)
            driver.wait()


@pytest.mark.slow
def test_a_killed_pool_actor_and_a_stopped_worker_are_restarted_and_each_trial_resumes_from_its_checkpoint(
    tmp_path,
):
    """Two faults in one study. t000: the trial pool's process is killed (what an OOM killer may pick);
    Ray restarts it, the trial drivers submit their trials again, and no trial is given a verdict for it.
    t001: SIGSTOP on its worker (a deadlocked collective looks the same from outside); once it has been
    silent longer than RAYLORA_WATCHDOG_S, its workers are ended and the trial resumes from its checkpoint."""
    spec = _write_spec(tmp_path / "study.yaml", training={"max_steps": 20, "eval_every": 2})
    storage, study_dir = tmp_path / "st", tmp_path / "st" / "s"
    driver = _run_until(_search_args(spec, storage), study_dir, steps=4, env={"RAYLORA_WATCHDOG_S": "20"})
    try:
        os.kill(_descendant(driver.pid, "TrialPool"), signal.SIGKILL)
        _wait_for(driver, study_dir, lambda trials: len(trials) == 2 and trials[1]["steps"] >= 4)
    except BaseException:
        os.killpg(driver.pid, signal.SIGKILL)
        driver.wait()
        raise
    out, err = _signal_descendant_and_wait(driver, "RayTrainWorker", signal.SIGSTOP)
    assert driver.returncode == 0, err[-3000:]
    summary = _strict(study_dir / "summary.json")
    assert [t["state"] for t in summary["trials"]] == ["COMPLETE", "COMPLETE"], summary
    assert [t["resumed_from_step"] >= 2 for t in summary["trials"]] == [True, True], summary
    _assert_adapters_exist(summary)
