"""The report's figures are drawn again only when what they show changed (``tracking.figures``)."""

from __future__ import annotations

import optuna
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from raylora.record.states import TrialState
from raylora.record.trials import StudyRecord, TrialRecord
from raylora.tracking import html_report

ROWS = [(["llm"], 1.0, 2.0), (["llm", "vision"], 0.8, 3.0), (["llm", "vision", "projector"], 0.9, 4.0)]


def _study(tmp_path):
    record = StudyRecord(tmp_path, "demo", "eval/loss", "min")
    study = optuna.create_study()
    for i, (scope, value, memory) in enumerate(ROWS):
        params = {"training.lora.scope": scope, "training.lora.r": 8 * (i + 1)}
        cost = {"cost/peak_mem_gb": memory, "cost/accelerator_hours": memory / 100}
        record.trials[f"t{i:03d}"] = TrialRecord(
            f"t{i:03d}",
            TrialState.COMPLETE,
            params,
            value,
            10,
            cost=cost,
            curve={"5": value + 0.1, "10": value},
        )
        asked = study.ask()
        asked.suggest_int("training.lora.r", 8, 24, step=8)
        asked.report(value + 0.1, 5)
        study.tell(asked, value)
    return record, study


def test_a_figure_is_drawn_again_only_when_what_it_shows_changed(tmp_path, monkeypatch):
    monkeypatch.setenv("RAYLORA_HOME", str(tmp_path / "home"))
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    kept = tmp_path / "home" / "cache" / "figures"
    record, study = _study(tmp_path)
    first = html_report.write(tmp_path / "a.html", record, study).read_text()
    assert first.count("<svg") == 6 and len(list(kept.glob("*.html"))) == 6
    again = html_report.write(tmp_path / "b.html", record, study).read_text()
    assert again == first and len(list(kept.glob("*.html"))) == 6  # nothing drawn: all read back
    record.trials["t001"].value = 0.75  # the record's three figures change; Optuna's study did not
    changed = html_report.write(tmp_path / "c.html", record, study).read_text()
    assert len(list(kept.glob("*.html"))) == 9 and changed != first
    assert changed.count("<svg") == 6


def test_figures_kept_by_another_drawer_are_drawn_again(tmp_path, monkeypatch):
    """A cached figure is read back only for the code that drew it: after an upgrade (another page source,
    optuna or matplotlib) every figure is drawn again, even for the same trials."""
    import hashlib
    from importlib.metadata import version
    from pathlib import Path

    monkeypatch.setenv("RAYLORA_HOME", str(tmp_path / "home"))
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    source = hashlib.sha256(Path(html_report.__file__).read_bytes()).hexdigest()[:16]
    assert html_report.drawn_by() == f"{source} optuna {version('optuna')} matplotlib {version('matplotlib')}"
    kept = tmp_path / "home" / "cache" / "figures"
    record, study = _study(tmp_path)
    html_report.write(tmp_path / "a.html", record, study)
    assert len(list(kept.glob("*.html"))) == 6
    monkeypatch.setattr(html_report, "drawn_by", lambda: "another source optuna 0 matplotlib 0")
    html_report.write(tmp_path / "b.html", record, study)
    assert len(list(kept.glob("*.html"))) == 12, "each figure drawn again for the other drawer"


def _failed_study(tmp_path):
    record = StudyRecord(tmp_path, "demo", "eval/loss", "min")
    record.trials["t000"] = TrialRecord("t000", TrialState.FAILED, {"training.lora.r": 8}, None, 0)
    study = optuna.create_study()
    asked = study.ask()
    asked.suggest_int("training.lora.r", 8, 24, step=8)
    study.tell(asked, state=optuna.trial.TrialState.FAIL)
    return record, study


@pytest.mark.parametrize("make", [_study, _failed_study], ids=["complete", "none-complete"])
def test_writing_the_report_prints_nothing_of_optunas(tmp_path, monkeypatch, make):
    """``raylora report`` printed Optuna's "[I ...] A new study created in memory" for the page's copy of
    the study, and with no complete trial its figures' "[W ...] ... does not contain completed trials"
    (the page says so in their place); Optuna's own verbosity (INFO unless set) is left as it was."""
    import logging

    class Kept(logging.Handler):
        def __init__(self):
            super().__init__()
            self.messages: list[str] = []

        def emit(self, record):
            self.messages.append(record.getMessage())

    monkeypatch.setenv("RAYLORA_HOME", str(tmp_path / "home"))
    record, study = make(tmp_path)
    level, kept = optuna.logging.get_verbosity(), Kept()
    optuna.logging.set_verbosity(optuna.logging.INFO)
    logging.getLogger("optuna").addHandler(kept)
    try:
        html_report.write(tmp_path / "a.html", record, study)
        assert optuna.logging.get_verbosity() == optuna.logging.INFO
    finally:
        logging.getLogger("optuna").removeHandler(kept)
        optuna.logging.set_verbosity(level)
    assert kept.messages == []


@settings(max_examples=30)
@given(st.lists(st.sampled_from(["COMPLETE", "FAIL", "PRUNED"]), max_size=6), st.integers(0, 2**16))
def test_importances_are_computed_only_from_two_complete_trials_on(states, seed):
    """From one complete trial PED-ANOVA's best 10% and its all are the same trial: Optuna returns equal
    importances that measure nothing, and the report says why there are none instead."""
    import random

    from raylora.tracking import report

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    rng = random.Random(seed)
    study = optuna.create_study()
    for state in states:
        trial = study.ask(
            {
                "lr": optuna.distributions.FloatDistribution(1e-5, 1e-2, log=True),
                "r": optuna.distributions.CategoricalDistribution([8, 16, 32]),
            }
        )
        if state == "COMPLETE":
            study.tell(trial, rng.uniform(0, 5))
        elif state == "PRUNED":
            trial.report(rng.uniform(0, 5), 1)
            study.tell(trial, state=optuna.trial.TrialState.PRUNED)
        else:
            study.tell(trial, state=optuna.trial.TrialState.FAIL)
    complete = states.count("COMPLETE")
    out = report._importances(study)
    figure = html_report._optuna_figure(study, "plot_param_importances")
    if complete >= 2:
        assert set(out["importances"]) == {"lr", "r"} and out["complete_trials"] == complete
        assert sum(out["importances"].values()) == pytest.approx(1.0)
        assert "<svg" in figure
    else:
        assert out["importances"] == {} and f"from {complete} complete trial(s)" in out["note"], out
        assert "<svg" not in figure and f"from {complete} complete trial(s)" in figure
