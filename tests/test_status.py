"""``raylora status``: a study's standing read from its folder alone, on folders built here as a study
leaves them (summary, reports, checkpoints, spec.json, driver.lock); no Ray, no torch."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from raylora.layout import DONE, LOCK, REPORTS, RUNS, SPEC
from raylora.record.states import TrialState
from raylora.record.trials import StudyRecord, TrialRecord
from raylora.study import status
from raylora.study.lock import StudyLock
from raylora.tracking.storage import LocalStorage

ROOT = Path(__file__).resolve().parents[1]
NOW = 1_800_000_000.0


def _study(tmp_path: Path, num_trials: int = 6) -> Path:
    """A quickstart-like study stopped mid-way: two complete, one pruned, one failed, two unfinished."""
    directory = tmp_path / "quickstart"
    record = StudyRecord(directory, "quickstart", "eval/loss", "min")
    rows = [
        ("t000", TrialState.COMPLETE, 6.5, 40),
        ("t001", TrialState.COMPLETE, 6.1, 40),
        ("t002", TrialState.PRUNED, 7.0, 10),
        ("t003", TrialState.FAILED, None, 0),
        ("t004", TrialState.RUNNING, 6.8, 20),
        ("t005", TrialState.RUNNING, None, 0),
    ]
    for trial_id, state, value, steps in rows:
        record.trials[trial_id] = TrialRecord(
            trial_id, state, {"training.lora.r": 8}, value if state != TrialState.RUNNING else None, steps
        )
        record.trials[trial_id].last_value = value
    record.save()
    spec = {"spec": {"study": {"name": "quickstart", "num_trials": num_trials}}, "set": {}, "data_sha256": {}}
    (directory / SPEC).write_text(json.dumps(spec))
    runs = directory / RUNS / "t004"
    for step in (10, 20):
        (runs / f"checkpoint_s{step:07d}").mkdir(parents=True)
        (runs / f"checkpoint_s{step:07d}" / DONE).write_text(json.dumps({"step": step}))
    (runs / "checkpoint_s0000030").mkdir()  # torn: no report.json, not a checkpoint to resume from
    reports = [
        {"step": s, "eval/loss": v, "reported_at": NOW - age} for s, v, age in [(10, 7.1, 200), (30, 6.7, 75)]
    ]
    (runs / REPORTS).write_text("".join(json.dumps(r) + "\n" for r in reports) + '{"step": 4')
    return directory


def test_a_stopped_study_trials_by_state_best_ages_and_what_resume_would_do(tmp_path):
    standing = status.read(str(_study(tmp_path)), now=NOW)
    assert standing.state == "stopped" and standing.lock is None
    assert standing.counts == {"RUNNING": 2, "COMPLETE": 2, "PRUNED": 1, "INFEASIBLE": 0, "FAILED": 1}
    assert standing.best["trial_id"] == "t001" and standing.best["value"] == 6.1
    t004, t005 = standing.running
    # the last whole line of reports.jsonl: step 30, sent 75 s before NOW (the torn line after it skipped)
    assert (t004.trial_id, t004.step, t004.last_report_age_s, t004.value) == ("t004", 30, 75.0, 6.7)
    assert t004.checkpoint_step == 20  # checkpoint_s30 has no report.json: not whole
    assert (t005.step, t005.last_report_age_s, t005.checkpoint_step) == (0, None, None)
    assert standing.resume == "resume t004 from step 20; resume t005 from the start"


def test_resume_counts_new_trials_from_spec_json(tmp_path):
    standing = status.read(str(_study(tmp_path, num_trials=9)), now=NOW)
    # 9 asked, 4 finished, 2 to resume: 3 new
    assert standing.resume.endswith("start 3 new trial(s) (study.num_trials 9, 4 finished)")


def test_a_finished_study(tmp_path):
    directory = tmp_path / "done"
    record = StudyRecord(directory, "done", "eval/click_acc", "max")
    record.trials["t000"] = TrialRecord("t000", TrialState.COMPLETE, {}, 0.5, 40)
    record.trials["t001"] = TrialRecord("t001", TrialState.COMPLETE, {}, 0.75, 40)
    record.save()
    standing = status.read(str(directory), now=NOW)
    assert standing.state == "finished" and standing.running == []
    assert standing.best["trial_id"] == "t001"  # mode max
    assert standing.resume.startswith("nothing: all 2 trial(s) finished")


def test_a_live_lock_holder_is_named_and_resume_would_refuse(tmp_path):
    directory = _study(tmp_path)
    lock = StudyLock(LocalStorage(directory)).acquire()
    try:
        standing = status.read(str(directory), now=time.time())
    finally:
        lock.release()
    assert standing.state == "running"
    assert standing.lock["pid"] == os.getpid() and standing.lock["host"] == socket.gethostname()
    assert standing.lock["stale"] is False and 0 <= standing.lock["renewed_age_s"] < 60
    assert standing.resume.startswith(f"refuse: the study is being run by pid {os.getpid()}")


def test_a_lock_whose_driver_is_gone_is_stale_and_would_be_taken_over(tmp_path):
    directory = _study(tmp_path)
    gone = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    pid = int(gone.stdout)
    held = {"host": socket.gethostname(), "pid": pid, "started": "2026-12-01T00:00:00+00:00", "expires": NOW}
    (directory / LOCK).write_text(json.dumps(held))
    standing = status.read(str(directory), now=NOW)
    assert standing.state == "stopped" and standing.lock["stale"] is True
    assert standing.resume.startswith(f"take over the stale driver.lock of pid {pid}")


def _cli(*args: str) -> subprocess.CompletedProcess:
    code = (
        "import sys\n"
        "from raylora import cli\n"
        f"sys.argv = ['raylora', 'status', *{list(args)!r}]\n"
        "try:\n"
        "    cli.main()\n"
        "finally:\n"
        "    heavy = [m for m in ('torch', 'ray', 'transformers', 'mlflow') if m in sys.modules]\n"
        "    print('imported:', heavy, file=sys.stderr)\n"
    )
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)


def test_status_command_text_and_json_without_ray_or_torch(tmp_path):
    directory = _study(tmp_path)
    text = _cli(str(directory))
    assert text.returncode == 0, text.stderr
    assert "imported: []" in text.stderr
    lines = text.stdout.splitlines()
    assert lines[0] == f"study quickstart ({directory}): stopped"
    assert "  best: t001 eval/loss 6.1  r=8" in lines
    assert any(line.startswith("  unfinished t004: step 30, last report ") for line in lines), text.stdout
    assert lines[-1] == "  --resume would: resume t004 from step 20; resume t005 from the start"
    as_json = _cli(str(directory), "--json")
    assert as_json.returncode == 0, as_json.stderr
    parsed = json.loads(as_json.stdout)
    assert parsed["counts"]["COMPLETE"] == 2 and parsed["running"][0]["trial_id"] == "t004"


@pytest.mark.parametrize("make", ["empty", "missing", "file"])
def test_a_folder_that_is_not_a_study_exits_2_with_one_line(tmp_path, make):
    target = tmp_path / "nothing"
    if make == "empty":
        target.mkdir()
    elif make == "file":
        target.write_text("x")
    proc = _cli(str(target))
    assert proc.returncode == 2, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if not line.startswith("imported:")]
    assert len(errors) == 1 and errors[0].startswith(f"error: status: {target}"), proc.stderr


def test_a_summary_that_does_not_parse_is_rebuilt_on_resume(tmp_path):
    directory = _study(tmp_path)
    (directory / "summary.json").write_text('{"study": "quickstart", "trials": [')  # a disk that filled
    standing = status.read(str(directory), now=NOW)
    assert standing.state == "stopped" and sum(standing.counts.values()) == 0
    assert standing.resume.startswith("rebuild summary.json from optuna.journal; start 6 new trial(s)")
