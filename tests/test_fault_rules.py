"""Round 3 of faults, rule by rule: a non-finite value never wins and never reaches summary.json, one rule
picks the best, a checkpoint is checked by its manifest before it is trusted, and an infrastructure fault
is never a trial's verdict. Fast: no Ray, real files and real pyarrow filesystems."""

from __future__ import annotations

import json
import math

from hypothesis import given, settings
from hypothesis import strategies as st

from raylora.record.states import TrialState
from raylora.record.trials import StudyRecord, TrialRecord, best_of

VALUES = st.one_of(
    st.none(),
    st.floats(allow_nan=True, allow_infinity=True, width=32),
    st.sampled_from([math.nan, math.inf, -math.inf, 0.0, 1.0]),
)
STATES = st.sampled_from(list(TrialState))


def _reference_best(trials: list[TrialRecord], mode: str) -> TrialRecord | None:
    """Written apart from best_of: sort the qualifying trials by hand, ties to the smaller slot number."""
    rows = []
    for t in trials:
        v = t.value
        if t.state != TrialState.COMPLETE or v is None or v != v or v in (math.inf, -math.inf):
            continue
        rows.append((v if mode == "min" else -v, int(t.trial_id[1:]), t))
    rows.sort(key=lambda r: (r[0], r[1]))
    return rows[0][2] if rows else None


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.tuples(STATES, VALUES), max_size=12),
    st.sampled_from(["min", "max"]),
    st.randoms(use_true_random=False),
)
def test_the_best_is_the_finite_extreme_of_the_complete_trials_whatever_the_order(rows, mode, rnd):
    trials = [TrialRecord(f"t{i}", state=s, value=v) for i, (s, v) in enumerate(rows)]
    rnd.shuffle(trials)  # the answer may not depend on the order trials were recorded in
    record = StudyRecord(None, "s", "eval/loss", mode)
    record.trials = {t.trial_id: t for t in trials}
    assert record.best() is _reference_best(trials, mode)
    ranked = record.ranked()
    if record.best() is not None:
        assert ranked[0] is record.best()  # the leaderboard's first row is the best


def test_best_of_ranks_nan_and_infinities_out_and_ties_go_to_the_lowest_trial_id():
    rows = [("t10", 1.0), ("t9", 1.0), ("t1", math.nan), ("t2", -math.inf), ("t3", None)]
    assert best_of(rows, "min", lambda r: r[1], lambda r: r[0]) == ("t9", 1.0)
    assert best_of(rows[2:], "max", lambda r: r[1], lambda r: r[0]) is None


def test_promote_picks_what_the_summary_picks_and_never_a_nan_run():
    from raylora.tracking.promote import select_best

    def run(trial_id, value, state="COMPLETE"):
        return {
            "tags": {"raylora.role": "trial", "raylora.state": state, "raylora.trial_id": trial_id},
            "metrics": {"best_eval/loss": value},
            "status": "FINISHED",
            "run_id": trial_id,
        }

    runs = [run("t000", math.nan), run("t001", 0.5), run("t002", 0.5), run("t003", 0.1, "PRUNED")]
    assert select_best(runs, "eval/loss", "min")["run_id"] == "t001"


def test_summary_json_is_strict_json_with_nan_and_infinity_anywhere(tmp_path):
    record = StudyRecord(tmp_path, "s", "eval/loss", "min")
    record.trials["t000"] = TrialRecord(
        "t000",
        state=TrialState.COMPLETE,
        value=math.nan,
        last_value=math.inf,
        cost={"cost/peak_mem_gb": -math.inf},
        values={"eval/loss": math.nan},
    )
    record.trials["t001"] = TrialRecord("t001", state=TrialState.COMPLETE, value=0.5)
    record.save()
    text = (tmp_path / "summary.json").read_text()

    def refuse(token):
        raise AssertionError(f"non-standard JSON token {token}")

    summary = json.loads(text, parse_constant=refuse)
    assert summary["best_trial"]["trial_id"] == "t001"
    t0 = summary["trials"][0]
    assert t0["value"] is None and t0["last_value"] is None and t0["cost"]["cost/peak_mem_gb"] is None
    assert StudyRecord.open_summary(tmp_path / "summary.json")["t000"].value is None
