"""The stopping rules (:mod:`raylora.study.stopping`) and the search replay (``benchmarks/search_replay.py``),
each checked against a reference written here: hand-computed values, scipy, and an ASHA written from the
paper's rule."""

from __future__ import annotations

import importlib.util
import math
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from raylora.record import agreement
from raylora.record.states import TrialState
from raylora.record.trials import TrialRecord
from raylora.spec.load import build
from raylora.study import stopping

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def replay():
    spec = importlib.util.spec_from_file_location("search_replay", ROOT / "benchmarks" / "search_replay.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["search_replay"] = module
    spec.loader.exec_module(module)
    return module


def quickstart(**study) -> dict:
    data = yaml.safe_load((ROOT / "search_spaces" / "quickstart.yaml").read_text())
    data["study"].update(study)
    return data


# -- Spearman


def test_spearman_matches_a_hand_computation_with_ties():
    # x ranks 1, 2, 3, 4; y = [10, 30, 20, 20] ranks 1, 4, 2.5, 2.5.
    # d = rank_x - mean 2.5: [-1.5, -.5, .5, 1.5]; e = rank_y - 2.5: [-1.5, 1.5, 0, 0]
    # sum(d*e) = 2.25 - .75 = 1.5; sum(d^2) = 5; sum(e^2) = 4.5; rho = 1.5 / sqrt(22.5)
    assert agreement.spearman([1, 2, 3, 4], [10, 30, 20, 20]) == pytest.approx(1.5 / math.sqrt(22.5))
    assert agreement.spearman([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)
    assert agreement.spearman([1, 2], [1, 2]) is None  # too few pairs to rank
    assert agreement.spearman([1, 1, 1], [1, 2, 3]) is None  # a constant has no ranking


@pytest.mark.parametrize("seed", range(5))
def test_spearman_agrees_with_scipy_on_random_tied_data(seed):
    from scipy.stats import spearmanr

    rng = np.random.default_rng(seed)
    x, y = rng.integers(0, 6, 25).tolist(), rng.normal(size=25).round(1).tolist()
    assert agreement.spearman(x, y) == pytest.approx(spearmanr(x, y).statistic)


def test_agreement_per_step_uses_only_trials_with_both_values():
    curves = {"a": {10: 1.0, 20: 0.5}, "b": {10: 2.0, 20: 0.4}, "c": {10: 3.0, 20: 0.6}, "d": {10: 0.0}}
    finals = {"a": 0.5, "b": 0.4, "c": 0.6}
    rho = agreement.agreement(curves, finals)
    assert 20 not in rho  # every trial's last evaluation: its final value against itself
    assert rho[10] == pytest.approx(0.5)  # ranks (1,2,3) vs (2,1,3): 1 - 6*2/(3*8)


@given(
    st.lists(
        st.dictionaries(st.sampled_from([10, 20, 30, 40]), st.integers(0, 5).map(float), min_size=1),
        max_size=7,
    )
)
def test_agreement_at_a_step_ranks_the_trials_that_evaluated_again_after_it(curve_list):
    """At each step: Spearman (scipy's) between the values there and the final values (each curve's
    best), over the trials that evaluated at that step and later too; no entry with fewer than 3 or a
    constant side."""
    from scipy.stats import spearmanr

    curves = {f"t{i}": c for i, c in enumerate(curve_list)}
    finals = {t: min(c.values()) for t, c in curves.items()}
    rho = agreement.agreement(curves, finals)
    for step in (10, 20, 30, 40):
        ids = [t for t, c in curves.items() if step in c and any(s > step for s in c)]
        xs, ys = [curves[t][step] for t in ids], [finals[t] for t in ids]
        if len(ids) < 3 or len(set(xs)) == 1 or len(set(ys)) == 1:
            assert step not in rho
        else:
            assert rho[step] == pytest.approx(spearmanr(xs, ys).statistic)


def test_the_verdict_names_at_most_five_steps_the_table_every_one():
    trials = [
        _trial(name, TrialState.COMPLETE, {s: base + 10.0 / s for s in range(10, 100, 10)})
        for name, base in (("a", 1.0), ("b", 2.0), ("c", 3.0))
    ]
    line = next(x for x in agreement.sentences(trials, "min") if x.startswith("Step–final agreement"))
    assert line.count("at step") == 5 and "…" in line
    assert "1.00 at step 10, 1.00 at step 20, 1.00 at step 30, 1.00 at step 40, …, 1.00 at step 80" in line
    assert "at step 90" not in line  # every trial's last evaluation


# -- grace period and the scheduler a spec builds


@pytest.mark.parametrize(("max_steps", "every"), [(750, 15), (40, 10), (100, 25), (1000, 7)])
def test_auto_grace_is_the_first_evaluation_at_the_fraction(max_steps, every):
    data = quickstart(scheduler={"grace_steps": "auto"})
    data["training"].update({"max_steps": max_steps, "eval_every": every})
    wanted = stopping.AUTO_GRACE_FRACTION * max_steps
    reference = next(s for s in range(every, max_steps + every, every) if s >= wanted)
    assert stopping.grace_steps(build(data), max_steps) == reference


def test_default_grace_is_eval_every():
    data = quickstart(scheduler={})
    data["training"].update({"max_steps": 750, "eval_every": 15})
    assert stopping.grace_steps(build(data), 750) == 15


def test_scheduler_is_tunes_asha_on_one_objective_and_pareto_asha_on_several():
    from ray.tune.schedulers import AsyncHyperBandScheduler

    one = build(quickstart(scheduler={"grace_steps": 10, "reduction_factor": 2}))
    built = stopping.scheduler(one, 40)
    assert isinstance(built, AsyncHyperBandScheduler)
    assert [m for m, _ in built._brackets[0]._rungs] == [20, 10]  # max_t = 39: no rung at the last step
    two = quickstart(
        objectives=[{"metric": "eval/loss", "mode": "min"}, {"metric": "cost/peak_mem_gb", "mode": "min"}]
    )
    two["study"].pop("objective")
    pareto = stopping.scheduler(build(two), 40)
    assert isinstance(pareto, stopping.ParetoASHA)
    assert stopping.scheduler_name(build(two), 40).startswith("pareto-asha")


# -- MO-ASHA by Pareto rank


def test_pareto_order_is_by_front_then_crowding():
    points = [(1, 5), (2, 4), (3, 3), (4, 0.5), (3, 4.5), (5, 5)]
    order = stopping.pareto_order(points)
    assert set(order[:4]) == {0, 1, 2, 3}  # the non-dominated four first
    assert set(order[:2]) == {0, 3}  # the front's two ends have infinite crowding distance
    assert order[4:] == [4, 5]  # (3, 4.5) is dominated only by (2, 4) and (3, 3); (5, 5) by everyone


def test_pareto_asha_keeps_a_trial_the_first_objective_alone_would_stop():
    recorded = [(1, 5), (2, 4), (3, 3)]
    cheap_but_worse = (4, 0.5)  # last on the first objective, best on the second
    assert stopping.promoted(recorded, cheap_but_worse, factor=2)
    dominated = (3.5, 4.5)  # dominated by (2, 4) and (3, 3)
    assert not stopping.promoted(recorded, dominated, factor=2)
    assert stopping.promoted([], (9, 9), factor=2)  # the first trial at a rung goes on


_objective_value = st.integers(0, 50).map(lambda k: k / 10)


@given(a=st.tuples(_objective_value, _objective_value), b=st.tuples(_objective_value, _objective_value))
def test_of_two_trials_that_trade_one_objective_for_the_other_the_better_first_objective_goes_on(a, b):
    """Two points at a rung where neither dominates the other are both ends of one front (infinite
    crowding distance each); one goes on (reduction 2), and it is the one better on the first objective,
    whichever arrived first. A point that dominates the other always goes on, one dominated never."""
    if a == b:
        return
    for recorded, point in ((a, b), (b, a)):
        (r1, r2), (p1, p2) = recorded, point
        if p1 <= r1 and p2 <= r2:
            expected = True  # point dominates (or ties on one and wins the other)
        elif r1 <= p1 and r2 <= p2:
            expected = False  # dominated
        else:
            expected = p1 < r1  # a trade-off: the first objective decides
        assert stopping.promoted([recorded], point, factor=2) is expected, (recorded, point)


def test_pareto_asha_decides_at_rungs_with_signs_for_max():
    goals = [("eval/click_acc", "max"), ("cost/peak_mem_gb", "min")]
    scheduler = stopping.ParetoASHA(goals, max_t=39, grace_period=10, reduction_factor=2)
    assert [m for m, _ in scheduler.rungs] == [10, 20]
    act = lambda tid, step, acc, mem: scheduler.on_trial_result(  # noqa: E731
        None, SimpleNamespace(trial_id=tid), {"step": step, "eval/click_acc": acc, "cost/peak_mem_gb": mem}
    )
    assert act("a", 10, 0.9, 1.0) == "CONTINUE"
    assert act("b", 10, 0.5, 2.0) == "STOP"  # lower accuracy and more memory than a
    assert act("c", 10, 0.5, 0.5) == "CONTINUE"  # a trade-off: on the front with a
    assert act("a", 15, 0.1, 9.0) == "CONTINUE"  # between rungs: no decision
    assert act("c", 10, 0.0, 9.0) == "CONTINUE"  # a rung is decided once per trial


# -- what a study reports about its stopping


def _trial(tid, state, curve, hours=None):
    t = TrialRecord(tid, state=state, curve={str(s): v for s, v in curve.items()})
    t.steps = max(curve)
    t.value = min(curve.values())
    if hours is not None:
        t.cost["cost/accelerator_hours"] = hours
    return t


def test_stopping_summary_counts_hours_saved_and_who_could_still_have_won():
    trials = [
        _trial("w", TrialState.COMPLETE, {10: 2.0, 20: 1.0, 40: 0.5}),  # the winner: 0.5
        _trial("x", TrialState.COMPLETE, {10: 1.0, 20: 0.9, 40: 0.8}),  # gains after step 10: 1.5 and 0.2
        _trial("y", TrialState.COMPLETE, {10: 3.0, 20: 2.0, 40: 1.5}),
        _trial("p", TrialState.PRUNED, {10: 1.9}, hours=0.25),  # 1.9 - 1.5 = 0.4 < 0.5: could have won
        _trial("q", TrialState.PRUNED, {10: 2.5}, hours=0.5),  # 2.5 - 1.5 = 1.0: could not
    ]
    out = agreement.stopping_summary(trials, "min")
    assert out["could_have_won"] == ["p"]
    assert out["hours_saved"] == pytest.approx(0.25 / 10 * 30 + 0.5 / 10 * 30)
    assert out["agreement"]["10"] == pytest.approx(0.5)  # (2,1,3) vs (1,2,3)
    assert out["agreement"]["20"] == pytest.approx(0.5)  # (1.0, 0.9, 2.0): again (2,1,3)
    assert "40" not in out["agreement"]  # the trials' last evaluation, their final value
    assert out["low_agreement"] is False
    trials[0].curve["10"] = 9.0  # now step 10 ranks the three backwards
    assert agreement.stopping_summary(trials, "min")["low_agreement"] is True


def test_a_summary_json_carries_the_stopping_section(tmp_path):
    from raylora.record.trials import StudyRecord

    record = StudyRecord(tmp_path, "s", "eval/loss", "min")
    for t in [
        _trial(c, TrialState.COMPLETE, {10: v, 20: v / 2})
        for c, v in zip("abc", (3.0, 1.0, 2.0), strict=True)
    ]:
        record.trials[t.trial_id] = t
    section = record.to_dict()["stopping"]
    assert section["agreement"] == {"10": 1.0}  # step 20 is every trial's last: not an agreement
    assert section["could_have_won"] == []


# -- the replay


def _synthetic(replay, rows=12, evals=4):
    rng = np.random.default_rng(3)
    lrs = np.exp(rng.uniform(np.log(3e-4), np.log(3e-3), rows))
    curves = np.array(
        [[1.0 + i * 0.01 + rng.normal(0, 0.3) / (e + 1) for e in range(evals)] for i in range(rows)]
    )
    params = [{"training.learning_rate.llm": float(lr), "training.lora.r": 16} for lr in lrs]
    search = {
        "training.learning_rate.llm": {"loguniform": [3e-4, 3e-3]},
        "training.lora.r": {"choice": [8, 16, 32]},
    }
    return replay.Table("synthetic", params, curves, [10, 20, 30, 40], np.full(rows, 400.0), search)


def _synthetic_spec(table, seed: int, scheduler: dict):
    """The quickstart spec over a :func:`_synthetic` table: 12 random-sampled trials of 40 steps, an
    evaluation every 10."""
    data = quickstart(num_trials=12, sampler={"type": "random", "seed": seed}, scheduler=scheduler)
    data["search"] = table.search
    data["training"].update({"max_steps": 40, "eval_every": 10})
    return build(data)


def test_nearest_neighbour_uses_log_scale_and_skips_used_rows(replay):
    search = {
        "training.learning_rate.llm": {"loguniform": [1e-5, 1e-1]},
        "training.lora.r": {"choice": [8, 32]},
    }
    params = [
        {"training.learning_rate.llm": 1e-4, "training.lora.r": 8},
        {"training.learning_rate.llm": 1e-3, "training.lora.r": 8},
        {"training.learning_rate.llm": 1e-2, "training.lora.r": 32},
    ]
    table = replay.Table("t", params, np.ones((3, 2)), [1, 2], np.ones(3), search)
    # 3e-4 is 0.48 decades from 1e-4 and 0.52 from 1e-3: nearer 1e-4 on a log scale, 1e-3 on a linear one.
    assert table.nearest({"training.learning_rate.llm": 3e-4, "training.lora.r": 8}) == 0
    assert table.nearest({"training.learning_rate.llm": 3e-4, "training.lora.r": 8}, {0}) == 1
    # Standardized: one decade of lr is 1/1.88 std, rank 8 -> 32 is 2.12 std; the rank weighs more here.
    assert table.nearest({"training.learning_rate.llm": 1e-2, "training.lora.r": 8}) == 1
    assert table.nearest({"training.learning_rate.llm": 3e-3, "training.lora.r": 32}) == 2
    assert table.nearest({"training.learning_rate.llm": 1e-4, "training.lora.r": 8}, {0, 1, 2}) == 0


def reference_asha(order_of_rows, curves, steps, grace, max_t, factor):
    """ASHA as Li et al. (2020) state it, one worker: each trial meets the rungs grace*factor^k < max_t in
    turn and stops where it is below the (1 - 1/factor) percentile of the values recorded there before it."""
    rungs = [grace * factor**k for k in range(int(math.log(max_t / grace) / math.log(factor) + 1))]
    recorded = {r: [] for r in rungs}
    stopped = []
    for row in order_of_rows:
        out = False
        for rung in rungs:
            value = -curves[row][steps.index(rung)]  # higher is better, as Tune negates a "min" metric
            cutoff = np.percentile(recorded[rung], (1 - 1 / factor) * 100) if recorded[rung] else None
            recorded[rung].append(value)
            if cutoff is not None and value < cutoff:
                out = True
                break
        stopped.append(out)
    return stopped


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_replay_stops_exactly_what_a_reference_asha_stops(replay, seed):
    table = _synthetic(replay)
    spec = _synthetic_spec(table, seed, {"grace_steps": 10, "reduction_factor": 2})
    run = replay.simulate(table, spec, "asha", 1, None, 12)
    rows = [r for r, _ in run.rows]
    assert len(set(rows)) == 12  # every trial a new row
    expected = reference_asha(rows, table.curves, table.steps, grace=10, max_t=39, factor=2)
    assert [s for _, s in run.rows] == expected
    assert any(expected) and not all(expected)
    finished = [float(table.final[r]) for r, s in run.rows if not s]
    assert sorted(v for _, v in run.completions) == sorted(finished)


def test_replay_counts_accelerator_hours_of_parallel_workers(replay):
    table = _synthetic(replay)
    run = replay.simulate(table, _synthetic_spec(table, 0, {"type": "fifo"}), "random", 3, None, 12)
    assert run.hours == pytest.approx(12 * 400 / 3600)  # no stopping: every run in full
    # three workers finish three 400 s runs together: 1200 accelerator-seconds at each of the first three
    assert [h for h, _ in run.completions[:3]] == pytest.approx([1200 / 3600] * 3)


def test_top_k_one_epoch_trains_the_best_screened_quarter(replay):
    table = _synthetic(replay, rows=12, evals=10)
    table.steps = list(range(10, 110, 10))
    data = quickstart(sampler={"type": "random", "seed": 0})
    data["search"] = table.search
    run = replay.top_k_one_epoch(table, build(data), 12, 2)
    kept = [r for r, stopped in run.rows if not stopped]
    screened_best = sorted((table.curves[r, 0] for r, _ in run.rows))[:3]
    assert sorted(table.curves[kept, 0]) == pytest.approx(screened_best)  # 10% of 100 steps = 1st eval
    assert run.hours == pytest.approx((12 * 0.1 + 3 * 0.9) * 400 / 3600)


@pytest.mark.parametrize("seed", [0, 1])
def test_every_start_and_resume_pays_the_start_up_seconds(replay, seed):
    """``start_s`` is charged once per trial start and once per resume: random search pays it 12 times on
    top of 12 runs of 400 s; one worker under pause and resume pays it for each job the reference runs."""
    table = _synthetic(replay)
    spec = _synthetic_spec(table, seed, {"type": "fifo"})
    plain = replay.simulate(table, spec, "random", 1, None, 12, start_s=50.0)
    assert plain.hours == pytest.approx(12 * (400 + 50) / 3600)
    spec = _synthetic_spec(table, seed, {"grace_steps": 10, "reduction_factor": 2})
    run = replay.simulate_promotion(table, spec, 1, None, 12, start_s=50.0)
    jobs: list = []
    _, paid = reference_promotion([r for r, _ in run.rows], table.curves, [0, 1, 3], 2, jobs)
    assert len(jobs) > 12  # some trials were resumed
    assert run.hours == pytest.approx((paid * 100 + len(jobs) * 50) / 3600)


def test_replay_smoke_prints_every_method(replay, capsys):
    out = replay.main(["--table", "surestop", "--rows", "20", "--seeds", "2", "--trials", "6", "--json"])
    assert set(out["methods"]) == {
        "raylora",
        "random",
        "asha",
        "hyperband",
        "topk_one_epoch",
        "raylora_grace_auto",
        "raylora_bound",
        "asha_promotion",
        "asha_promotion_neighbours",
    }
    assert out["methods"]["random"]["compute_to_random_best"] <= 1.0
    assert isinstance(out["raylora_worse_than_topk_at_any_budget"], bool)
    assert capsys.readouterr().out.count("\n") == 1  # one JSON object on one line


def test_a_record_loaded_and_saved_again_keeps_the_scheduler_it_ran_with(tmp_path):
    """``raylora report`` and MLflow's catch-up load summary.json and save it again: the early-stopping
    rule it names stays."""
    import json

    from raylora.record.trials import StudyRecord

    spec = build(quickstart())
    record = StudyRecord(tmp_path, spec.study.name, "eval/loss", "min")
    record.trials = {"a": _trial("a", TrialState.COMPLETE, {10: 1.0, 20: 0.5})}
    record.scheduler = "asha(grace=10, reduction=2)"
    record.save()
    again = StudyRecord.open(tmp_path, spec)
    again.save()
    assert json.loads((tmp_path / "summary.json").read_text())["scheduler"] == "asha(grace=10, reduction=2)"


def test_the_report_says_what_stopping_saved_and_warns_on_low_agreement(tmp_path):
    from raylora.record.trials import StudyRecord
    from raylora.tracking import html_report, verdict

    record = StudyRecord(tmp_path, "s", "eval/loss", "min")
    trials = [
        _trial("w", TrialState.COMPLETE, {10: 9.0, 20: 1.0, 40: 0.5}),  # step 10 ranks the three backwards
        _trial("x", TrialState.COMPLETE, {10: 1.0, 20: 0.9, 40: 0.8}),
        _trial("y", TrialState.COMPLETE, {10: 0.5, 20: 2.0, 40: 1.5}),
        _trial("p", TrialState.PRUNED, {10: 1.9}, hours=0.25),
    ]
    record.trials = {t.trial_id: t for t in trials}
    record.scheduler = "asha(grace=10, reduction=2)"
    assert record.to_dict()["scheduler"] == "asha(grace=10, reduction=2)"
    lines = verdict.verdict(trials, "eval/loss", "min")
    assert any(line.startswith("warning: at step 10") for line in lines)
    assert any("saved about 0.75 accelerator-hours" in line and ": p." in line for line in lines)
    assert agreement.warning(trials, "min").startswith("warning: at step 10")
    page = html_report.write(tmp_path / "index.html", record).read_text()
    assert (
        "Early-stopping rule: asha(grace=10, reduction=2). Accelerator-hours saved by stopping: 0.75" in page
        and "could still have beaten the winner's eval/loss: p" in page
        and "Spearman with the final value</th></tr><tr><td>10</td>" in page  # three complete at step 10
    )
    record.trials = {t.trial_id: t for t in trials[1:]}  # two complete trials: no agreement to show
    page = html_report.write(tmp_path / "index.html", record).read_text()
    assert "needs 3 complete trials with a value at the same step before their last; this study has 2" in page
    assert "Spearman with the final value" not in page


def test_the_report_draws_intermediate_values_from_the_record_for_several_objectives(tmp_path):
    """Optuna keeps no intermediate values for a study of several objectives; the report's figure comes
    from summary.json's curves, so a two-objective study gets one too (and a note before any report)."""
    from raylora.record.trials import StudyRecord
    from raylora.tracking import html_report

    def section(page: str) -> str:
        start = page.index('<h2 id="intermediate-values">')
        end = page.find("<h2", start + 1)
        return page[start : end if end > 0 else None]

    record = StudyRecord(tmp_path, "s", "eval/loss", "min")
    record.goals = [("eval/loss", "min"), ("cost/peak_mem_gb", "min")]
    record.trials = {"a": TrialRecord("a", state=TrialState.RUNNING)}
    page = html_report.write(tmp_path / "index.html", record).read_text()
    assert "no trial has reported eval/loss yet" in section(page) and "<svg" not in section(page)
    trials = [
        _trial("a", TrialState.COMPLETE, {10: 2.0, 20: 1.0, 40: 0.5}),
        _trial("b", TrialState.PRUNED, {10: 3.0}),
    ]
    record.trials = {t.trial_id: t for t in trials}
    page = html_report.write(tmp_path / "index.html", record).read_text()
    assert "<svg" in section(page)


# -- the stopping bound: "could still win", shared by the report and BoundedASHA

STEPS = [10, 20, 30, 40]
_curve = st.lists(st.integers(0, 40).map(lambda k: k / 8), min_size=4, max_size=4)


def _could_reach(value, step, curves, best):
    """Reference: some curve that ran past ``step`` improved enough after it for ``value`` to reach ``best``
    (None when no curve ran past ``step``)."""
    past = [c for c in curves if step in c and any(s > step for s in c)]
    if not past:
        return None
    return any(value - (c[step] - min(c.values())) <= best for c in past)


@settings(max_examples=200)
@given(
    st.lists(st.lists(st.integers(0, 40).map(lambda k: k / 8), min_size=1, max_size=4), max_size=5),
    st.sampled_from(STEPS),
    st.integers(0, 40).map(lambda k: k / 8),
    st.integers(0, 40).map(lambda k: k / 8),
)
def test_could_still_win_is_value_minus_the_largest_gain_after_the_step(values, step, value, best):
    curves = [dict(zip(STEPS, v, strict=False)) for v in values]
    assert agreement.could_still_win(value, step, curves, best) == _could_reach(value, step, curves, best)


def _bounded_asha_reference(curves, grace, max_t, factor):
    """ASHA from the paper's rule (one worker, trials in turn) whose stops must also pass the bound:
    a trial ASHA stops goes on if, after the largest gain a finished trial made after that step, it could
    reach the best finished value. Returns each trial's (stopped, step it ended at)."""
    rungs = [grace * factor**k for k in range(int(math.log(max_t / grace) / math.log(factor) + 1))]
    recorded, finished, out = {r: [] for r in rungs}, [], []
    for curve in curves:
        end = None
        for step, value in curve.items():
            if step not in recorded:
                continue
            cutoff = np.percentile(recorded[step], (1 - 1 / factor) * 100) if recorded[step] else None
            recorded[step].append(-value)
            if cutoff is None or -value >= cutoff:
                continue  # ASHA keeps it
            best = min((min(c.values()) for c in finished), default=None)
            if best is None or not _could_reach(value, step, finished, best):
                end = step
                break
        out.append((end is not None, end or max(curve)))
        if end is None:
            finished.append(curve)
    return out


@settings(max_examples=60)
@given(st.lists(_curve, min_size=1, max_size=12), st.sampled_from([2, 3]))
def test_bounded_asha_stops_only_what_asha_stops_and_the_bound_allows(values, factor):
    from raylora.study.bounded_asha import BoundedASHA

    curves = [dict(zip(STEPS, v, strict=True)) for v in values]
    scheduler = BoundedASHA(
        metric="eval/loss", mode="min", max_t=39, grace_period=10, reduction_factor=factor
    )
    got = []
    for k, curve in enumerate(curves):
        trial = SimpleNamespace(trial_id=f"t{k}")
        scheduler.on_trial_add(None, trial)
        for step, value in curve.items():
            result = {"step": step, "eval/loss": value}
            if step == max(curve):
                scheduler.on_trial_complete(None, trial, result)
                got.append((False, step))
            elif scheduler.on_trial_result(None, trial, result) == "STOP":
                got.append((True, step))
                break
    assert got == _bounded_asha_reference(curves, grace=10, max_t=39, factor=factor)


def test_bounded_asha_on_a_max_metric_keeps_what_could_still_win():
    from ray.tune.schedulers import ASHAScheduler

    from raylora.study.bounded_asha import BoundedASHA

    kwargs = dict(metric="eval/acc", mode="max", max_t=39, grace_period=10, reduction_factor=2)
    bounded, plain = BoundedASHA(**kwargs), ASHAScheduler(time_attr="step", stop_last_trials=False, **kwargs)
    finished = {"e": [0.2, 0.7, 0.75, 0.75], "a": [0.6, 0.7, 0.8, 0.8]}  # gains after step 10: 0.55, 0.2
    for scheduler in (bounded, plain):
        for tid, accs in finished.items():
            trial = SimpleNamespace(trial_id=tid)
            scheduler.on_trial_add(None, trial)
            for step, acc in zip(STEPS[:3], accs, strict=False):
                assert scheduler.on_trial_result(None, trial, {"step": step, "eval/acc": acc}) == "CONTINUE"
            scheduler.on_trial_complete(None, trial, {"step": 40, "eval/acc": accs[-1]})

    def act(scheduler, tid, acc):
        scheduler.on_trial_add(None, SimpleNamespace(trial_id=tid))
        return scheduler.on_trial_result(None, SimpleNamespace(trial_id=tid), {"step": 10, "eval/acc": acc})

    # Step 10's cutoff is the median of 0.2 and 0.6 = 0.4: ASHA stops b (0.3) and c (0.2). The best
    # finished is 0.8; b + 0.55 = 0.85 could reach it, c + 0.55 = 0.75 could not.
    assert [act(plain, "b", 0.3), act(plain, "c", 0.2)] == ["STOP", "STOP"]
    assert [act(bounded, "b", 0.3), act(bounded, "c", 0.2)] == ["CONTINUE", "STOP"]


def test_a_wrong_bound_is_a_one_line_error_naming_the_yaml_line(tmp_path):
    import subprocess

    spec = tmp_path / "spec.yaml"
    spec.write_text("study:\n  scheduler:\n    bound: largest\n")
    proc = subprocess.run(
        [sys.executable, "-m", "raylora", "validate", str(spec)], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().count("\n") == 0
    assert f"{spec}:3:" in proc.stderr and "study.scheduler.bound" in proc.stderr
    assert "'none'" in proc.stderr and "'largest_gain'" in proc.stderr


def test_the_bound_is_for_one_objective():
    from raylora.errors import UserError

    two = quickstart(
        objectives=[{"metric": "eval/loss", "mode": "min"}, {"metric": "cost/peak_mem_gb", "mode": "min"}],
        scheduler={"bound": "largest_gain"},
    )
    two["study"].pop("objective")
    with pytest.raises(UserError, match=r"study\.scheduler\.bound: largest_gain is for one objective"):
        build(two)
    one = build(quickstart(scheduler={"grace_steps": 10, "bound": "largest_gain"}))
    assert stopping.scheduler_name(one, 40) == "asha(grace=10, reduction=2, bound=largest_gain)"
    assert type(stopping.scheduler(one, 40)).__name__ == "BoundedASHA"


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_replay_drives_the_bounded_asha_the_spec_builds(replay, seed):
    table = _synthetic(replay)
    spec = _synthetic_spec(table, seed, {"grace_steps": 10, "reduction_factor": 2, "bound": "largest_gain"})
    run = replay.simulate(table, spec, "raylora_bound", 1, None, 12)
    curves = [dict(zip(table.steps, table.curves[r].tolist(), strict=True)) for r, _ in run.rows]
    expected = _bounded_asha_reference(curves, grace=10, max_t=39, factor=2)
    assert [s for _, s in run.rows] == [stopped for stopped, _ in expected]


def test_replay_of_some_methods_runs_random_search_and_those(replay, capsys):
    argv = ["--table", "surestop", "--rows", "20", "--seeds", "1", "--trials", "6", "--json"]
    out = replay.main([*argv, "--methods", "raylora_bound"])
    assert set(out["methods"]) == {"random", "raylora_bound"}
    assert out["raylora_worse_than_topk_at_any_budget"] is None  # neither side replayed: no verdict
    capsys.readouterr()


# -- the what-if: ASHA's promotion rule (pause and resume), not what raylora runs

_record = st.tuples(st.integers(0, 2), st.integers(0, 6).map(lambda k: k / 2))  # (rung, value)


@given(steps=st.lists(st.one_of(_record, st.just("promote")), max_size=40), factor=st.sampled_from([2, 3]))
def test_promotion_asha_resumes_the_best_waiting_top_trial_of_the_highest_rung(replay, steps, factor):
    """After any sequence of pauses, each promotion is the best trial, not yet promoted from its rung,
    among the top len(rung) // factor there (the earlier pause first on a tie), from the highest rung that
    has one; None only when no rung has one."""
    asha = replay.PromotionASHA(3, factor)
    rungs: list[list[tuple[float, int, str]]] = [[], [], []]  # (value, arrival, trial) per rung
    promoted: list[set[str]] = [set(), set(), set()]
    for n, step in enumerate(steps):
        if step != "promote":
            rung, value = step
            asha.record(f"t{n}", rung, value)
            rungs[rung].append((value, n, f"t{n}"))
            continue
        waiting = []
        for rung in (2, 1, 0):
            top = sorted(rungs[rung])[: len(rungs[rung]) // factor]
            waiting = [t for _, _, t in top if t not in promoted[rung]]
            if waiting:
                promoted[rung].add(waiting[0])
                assert asha.promotion() == (waiting[0], rung)
                break
        if not waiting:
            assert asha.promotion() is None


@given(
    values=st.lists(st.integers(0, 6).map(lambda k: k / 2), min_size=1, max_size=12),
    flagged=st.sets(st.integers(0, 11)),
    factor=st.sampled_from([2, 3]),
)
def test_promotion_asha_also_promotes_what_the_protection_flags_best_first(replay, values, flagged, factor):
    """With a ``promotable`` rule, each promotion from a rung is the best not yet promoted among its top
    len // factor, then among the trials the rule flags (best first, earlier pause on a tie)."""
    flags = {f"t{n}" for n in flagged}
    asha = replay.PromotionASHA(1, factor, lambda trial: trial in flags)
    for n, value in enumerate(values):
        asha.record(f"t{n}", 0, value)
    ranked = [f"t{n}" for _, n in sorted((v, n) for n, v in enumerate(values))]
    top = ranked[: len(values) // factor]
    expected = top + [t for t in ranked[len(top) :] if t in flags]
    assert [asha.promotion() for _ in expected] == [(t, 0) for t in expected]
    assert asha.promotion() is None


_lr = st.floats(1e-5, 1e-3)


@given(
    points=st.lists(
        st.tuples(_lr, st.sampled_from([4, 8, 16, 32]), st.floats(0.0, 0.3)), min_size=3, max_size=10
    ),
    finals=st.lists(st.integers(0, 4).map(float), min_size=10, max_size=10),  # ties at the median
    done=st.integers(0, 9),
)
def test_neighbours_flags_a_configuration_whose_nearest_finished_one_finished_in_the_better_half(
    replay, points, finals, done
):
    """A paused trial is flagged when the finished trial nearest it (log lr and log rank over their ranges,
    dropout over its range) finished at or below the finished trials' median; never with fewer than two
    finished, never a finished one. The reference measures distance on hand-scaled coordinates."""
    search = {
        "training.learning_rate.llm": {"loguniform": [1e-5, 1e-3]},
        "training.lora.r": {"choice": [4, 8, 16, 32]},
        "training.lora.dropout": {"uniform": [0.0, 0.3]},
    }
    near = replay.Neighbours(search)
    scaled = []
    for n, (lr, r, dropout) in enumerate(points):
        near.started(
            f"t{n}",
            {"training.learning_rate.llm": lr, "training.lora.r": r, "training.lora.dropout": dropout},
        )
        scaled.append((math.log(lr / 1e-5) / math.log(100), math.log(r / 4) / math.log(8), dropout / 0.3))
    finished = {n: finals[n] for n in range(min(done, len(points) - 1))}
    for n, value in finished.items():
        near.finished(f"t{n}", value)
    ordered = sorted(finished.values())
    k = len(ordered)
    median = (ordered[(k - 1) // 2] + ordered[k // 2]) / 2 if k else None
    for n in range(len(points)):
        if k < 2 or n in finished:
            assert near(f"t{n}") is False
            continue
        distance = {m: sum((a - b) ** 2 for a, b in zip(scaled[m], scaled[n], strict=True)) for m in finished}
        closest = min(distance.values())
        ties = [finished[m] for m in finished if math.isclose(distance[m], closest, abs_tol=1e-12)]
        if len(ties) == 1:  # on an exact tie either neighbour may be the nearest
            assert near(f"t{n}") is (ties[0] <= median)


def reference_promotion(order, curves, ends, factor, jobs=None):
    """One worker, as Li et al. (2020, Algorithm 2) state it: resume the best waiting trial in the top
    len // factor of the highest rung that has one, else start the next row of ``order``. Returns the
    rows that finished and the evaluation intervals paid for (and appends each start or resume to
    ``jobs``)."""
    recorded = [[] for _ in ends[:-1]]  # per rung: (value, arrival, row)
    promoted = [set() for _ in ends[:-1]]
    rows, finished, paid, arrival = iter(order), [], 0, 0
    while True:
        job = None
        for k in reversed(range(len(recorded))):
            waiting = [
                r for _, _, r in sorted(recorded[k])[: len(recorded[k]) // factor] if r not in promoted[k]
            ]
            if waiting:
                promoted[k].add(waiting[0])
                job = (waiting[0], ends[k] + 1, ends[k + 1])
                break
        if job is None:
            row = next(rows, None)
            if row is None:
                return finished, paid
            job = (row, 0, ends[0])
        row, first, last = job
        paid += last - first + 1
        if jobs is not None:
            jobs.append(job)
        if last == ends[-1]:
            finished.append(row)
        else:
            arrival += 1
            recorded[ends.index(last)].append((curves[row][last], arrival, row))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_a_promoted_trial_resumes_where_it_paused_and_costs_only_its_new_steps(replay, seed):
    """One worker, no budget: the replay finishes exactly the trials the reference promotes to the end, and
    pays each evaluation interval once, however often a trial paused (every run is 400 s over 4 intervals)."""
    table = _synthetic(replay)
    spec = _synthetic_spec(table, seed, {"grace_steps": 10, "reduction_factor": 2})
    run = replay.simulate_promotion(table, spec, 1, None, 12)
    order = [r for r, _ in run.rows]  # launch order; a random sampler's draws do not depend on results
    assert len(set(order)) == 12
    finished, paid = reference_promotion(order, table.curves, [0, 1, 3], factor=2)  # rungs at steps 10, 20
    assert 0 < len(finished) < 12
    assert sorted(r for r, stopped in run.rows if not stopped) == sorted(finished)
    assert [v for _, v in run.completions] == [float(table.final[r]) for r in finished]
    assert run.hours == pytest.approx(paid * 100 / 3600)
