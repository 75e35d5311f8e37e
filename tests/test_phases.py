"""A trial's start-up is never silent: the recipe names each phase through its session, the trial pool keeps
where each worker group is, and plain progress output says each phase that lasts (no Ray here; the whole
path runs in test_search's quickstart)."""

from __future__ import annotations

import math
import re
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from raylora import spec as spec_lib
from raylora.record.trials import StudyRecord
from raylora.study.pool import TrialPool, _phase, _Runner
from raylora.study.progress import Progress
from raylora.train import LocalSession, train

QUICKSTART = Path(__file__).resolve().parents[1] / "search_spaces" / "quickstart.yaml"


def test_the_recipe_names_its_phases_in_order_before_the_first_step(tmp_path, monkeypatch):
    monkeypatch.setenv("RAYLORA_PROGRESS_EVERY_S", "0")
    # image bounds no other test uses: a cold length index, so indexing counts its records
    overrides = ["training.max_steps=2", "training.eval_every=2", "data.image.max_pixels=65000"]
    spec = spec_lib.load(QUICKSTART, overrides)
    lines: list[str] = []
    train(spec, LocalSession(tmp_path / "out", log=lines.append, live=False))
    first_step = next(i for i, line in enumerate(lines) if line.startswith("step "))
    said = [re.sub(r" \d+/\d+$", "", line) for line in lines[:first_step]]
    order = ["loading the model", "indexing the data", "first training step"]
    assert [p for p in dict.fromkeys(said) if p in order] == order, lines
    counts = [line for line in lines if line.startswith("indexing the data ")]
    assert counts and all(re.fullmatch(r"indexing the data \d+/\d+", line) for line in counts), lines


def _progress(lines: list[str]) -> Progress:
    spec = spec_lib.load(QUICKSTART)
    record = StudyRecord(Path("unused"), "quickstart", "eval/loss", "min")
    return Progress(spec, record, lines.append, live=False)


def test_plain_lines_say_each_start_up_phase_that_lasts(monkeypatch):
    monkeypatch.delenv("RAYLORA_PROGRESS_EVERY_S", raising=False)
    pool = TrialPool({"max_failures": 1, "workers": 2}, max_runners=0)
    pool.runners[0] = _Runner(phase=_phase(None, "starting workers 0/2"))  # what _start_runner sets
    pool.submit("t000", {"spec": 1})
    lines: list[str] = []
    progress = _progress(lines)
    clock = [0.0]

    def look(after_s: float) -> None:
        snapshot = pool.snapshot()
        start = min((v["since"] for v in snapshot.values() if "since" in v), default=0.0)
        clock[0] = max(clock[0], start) + after_s
        progress.phase_lines(snapshot, clock[0])

    look(5)  # the queued trial hears the phase of the group that will take it
    pool.checked_in(0, rank=0)
    look(5)  # same phase, one more worker up: said once
    pool.checked_in(0, rank=1)
    look(1)  # importing for 1 s: not yet worth a line
    look(4)
    assert pool.next_job(0, fresh=True, timeout=0)["trial_id"] == "t000"
    pool.phase("t000", "loading the model")
    look(10)
    for done in (1, 2, 3):
        pool.phase("t000", f"indexing the data {done}/3")
        look(4)
    pool.progress("t000", {"step": 1, "max_steps": 40})
    look(30)  # training: its steps are the progress lines' business, not a phase
    said = [line.split("] ", 1)[1] for line in lines]
    assert said == [
        "t000 starting workers 0/2",
        "t000 importing",
        "t000 loading the model",
        "t000 indexing the data 1/3",
    ]


def test_a_short_phase_goes_unsaid_and_the_snapshot_shows_where_training_is():
    pool = TrialPool({"max_failures": 1, "workers": 1}, max_runners=0)
    pool.runners[0] = _Runner()
    pool.submit("t000", {"spec": 1})
    pool.next_job(0, fresh=True, timeout=0)
    pool.phase("t000", "loading the model")
    lines: list[str] = []
    progress = _progress(lines)
    since = pool.snapshot()["t000"]["since"]
    progress.phase_lines(pool.snapshot(), since + progress.phase_after_s / 2)
    assert lines == []
    pool.progress("t000", {"step": 3, "max_steps": 40})
    assert "phase" not in pool.snapshot()["t000"] and pool.snapshot()["t000"]["step"] == 3


def test_a_group_started_ahead_of_its_trial_is_heard_once():
    pool = TrialPool({"max_failures": 1, "workers": 1}, max_runners=0)
    pool.runners[0] = _Runner(phase=_phase(None, "starting workers 0/1"))  # pool.warm before Tune submits
    lines: list[str] = []
    progress = _progress(lines)
    since = pool.snapshot()["workers 0"]["since"]
    progress.phase_lines(pool.snapshot(), since + 5)
    pool.submit("t000", {"spec": 1})
    assert pool.snapshot()["t000"]["phase"] == "starting workers 0/1"
    progress.phase_lines(pool.snapshot(), since + 10)
    pool.checked_in(0, rank=0)
    progress.phase_lines(pool.snapshot(), since + 20)
    assert [line.split("] ", 1)[1] for line in lines] == ["workers 0 starting workers 0/1", "t000 importing"]


def test_a_group_restarting_under_its_trial_says_so():
    pool = TrialPool({"max_failures": 1, "workers": 2}, max_runners=0)
    pool.runners[0] = _Runner()
    pool.submit("t000", {"spec": 1})
    pool.checked_in(0, rank=0)
    pool.checked_in(0, rank=1)
    pool.next_job(0, fresh=True, timeout=0)
    pool.progress("t000", {"step": 7, "max_steps": 40})
    pool.checked_in(0, rank=1)  # rank 1 again: a worker died and Ray Train restarts the group
    assert pool.snapshot()["t000"]["phase"] == "starting workers 1/2"
    assert pool.next_job(0, fresh=True, timeout=0)["trial_id"] == "t000"  # handed back to resume
    assert pool.snapshot()["t000"]["step"] == 7


def test_throughput_counts_the_time_spent_training_not_the_evaluations(tmp_path, monkeypatch):
    """samples/s, live and reported, is the window's samples over the time spent training them: a clock
    moved on by 1000 s during each evaluation leaves the rate after it as high as before it."""
    from raylora.train import recipe

    monkeypatch.setenv("RAYLORA_PROGRESS_EVERY_S", "0")
    moved = [0.0]
    real_clock, real_evaluate = recipe._clock, recipe._evaluate
    monkeypatch.setattr(recipe, "_clock", lambda: real_clock() + moved[0])

    def slow_evaluate(*args, **kwargs):
        try:
            return real_evaluate(*args, **kwargs)
        finally:
            moved[0] += 1000.0

    monkeypatch.setattr(recipe, "_evaluate", slow_evaluate)
    running: list[tuple[int, dict]] = []

    class Session(LocalSession):
        def progress(self, step, max_steps, values):
            running.append((step, dict(values)))

    spec = spec_lib.load(
        QUICKSTART, ["training.max_steps=4", "training.eval_every=2", "training.click_eval_samples=0"]
    )
    session = Session(tmp_path / "out", log=lambda line: None, live=False)
    train(spec, session)
    batch = spec.training.per_device_train_batch_size
    # Two steps of `batch` samples in each window: at least 2 * batch / 100 samples/s unless a window's
    # clock took in an evaluation's 1000 s (then below 2 * batch / 1000).
    reported = [h["samples_per_s"] for h in session.history]
    assert len(reported) == 2 and min(reported) > 2 * batch / 100, reported
    after_eval = [values["samples_per_s"] for step, values in running if step == 3]
    assert after_eval and after_eval[0] > batch / 100, running


@settings(max_examples=60)
@given(
    windows=st.lists(
        st.tuples(
            st.lists(st.tuples(st.floats(0.01, 50.0), st.integers(1, 64)), min_size=1, max_size=6),
            st.floats(0.0, 5000.0),  # the report's evaluation and checkpoint
        ),
        min_size=1,
        max_size=5,
    )
)
def test_each_windows_rate_is_its_samples_over_its_training_seconds(windows):
    """Driven as the recipe drives it (a step's samples once the step ran, a report after the window's
    last step, the clock restarted after the report), each reported and live rate equals the window's
    samples divided by the seconds its steps took, whatever the evaluations between windows took."""
    from unittest import mock

    from raylora.train import recipe

    now = [0.0]
    with mock.patch.object(recipe, "_clock", lambda: now[0]):
        window = recipe._Window()
        for steps, report_s in windows:
            seconds = samples = 0.0
            for step_s, step_samples in steps:
                now[0] += step_s
                window.add(1.0, step_samples, 0)
                seconds, samples = seconds + step_s, samples + step_samples
                assert math.isclose(window.running()["samples_per_s"], samples / seconds, rel_tol=1e-9)
            assert math.isclose(
                window.flush(1, False, None)["samples_per_s"], samples / seconds, rel_tol=1e-9
            )
            now[0] += report_s
            window.restart()
