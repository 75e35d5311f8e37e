"""`optuna-dashboard <study>/optuna.journal`, which `raylora search` prints at the end, opens the study."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from mlflow_server import free_port

from raylora import spec as spec_lib
from raylora.study.optuna_searcher import open_optuna

ROOT = Path(__file__).resolve().parents[1]
DASHBOARD = str(Path(sys.executable).with_name("optuna-dashboard"))


@pytest.mark.slow
def test_optuna_dashboard_opens_a_study_journal(tmp_path):
    spec = spec_lib.load(ROOT / "search_spaces" / "quickstart.yaml")
    study = open_optuna(tmp_path / "quickstart", spec)
    for value in (0.5, 0.25):
        trial = study.ask()
        trial.suggest_int("training.lora.r", 8, 32)
        study.tell(trial, value)
    journal = tmp_path / "quickstart" / "optuna.journal"
    port = free_port()
    server = subprocess.Popen(
        [DASHBOARD, str(journal), "--port", str(port), "--host", "127.0.0.1", "--quiet"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline, studies = time.monotonic() + 60, None
        while time.monotonic() < deadline and server.poll() is None:
            try:
                studies = _get(port, "/api/studies")["study_summaries"]
                break
            except OSError:
                time.sleep(0.5)
        assert studies is not None, server.stdout.read() if server.poll() is not None else "no answer"
        (found,) = [s for s in studies if s["study_name"] == "quickstart"]
        detail = _get(port, f"/api/studies/{found['study_id']}")
        assert len(detail["trials"]) == 2 and detail["best_trials"][0]["values"] == [0.25]
    finally:
        server.terminate()
        server.wait(timeout=30)


def _get(port: int, path: str) -> dict:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as response:
        return json.loads(response.read())
