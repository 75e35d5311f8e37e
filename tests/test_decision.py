"""The decision and its cost: warm-started studies, cost metrics, and the report that decides (real Optuna,
real MLflow stores; the study end to end is one slow test module-scoped run)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import optuna
import pytest
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend

from raylora import spec as spec_lib
from raylora.errors import UserError, UserErrors
from raylora.spec import space
from raylora.study import warm

ROOT = Path(__file__).resolve().parents[1]

SEARCH = {
    "training.lora.scope": {"choice": [["llm"], ["llm", "vision"]]},
    "training.lora.r": {"choice": [8, 16]},
    "training.learning_rate.llm": {"loguniform": [1.0e-4, 1.0e-3]},
    "training.learning_rate.vision": {"loguniform": [1.0e-6, 1.0e-4]},
}


def _spec(search=SEARCH, **study):
    return spec_lib.build({"study": {"name": "s", **study}, "search": search})


def _journal_study(directory: Path, spec) -> optuna.Study:
    directory.mkdir(parents=True, exist_ok=True)
    storage = JournalStorage(JournalFileBackend(str(directory / "optuna.journal")))
    sampler = optuna.samplers.RandomSampler(seed=spec.study.sampler.seed)
    return optuna.create_study(
        storage=storage, study_name=spec.study.name, direction="minimize", sampler=sampler
    )


def _run_trials(study: optuna.Study, spec, n: int, slot_base: int = 0) -> list[optuna.trial.FrozenTrial]:
    """What StudySearcher does per trial: queue the next configuration, ask, sample, tell."""
    sample = space.define_by_run(spec)
    for i in range(n):
        warm.enqueue_next(study, spec)
        trial = study.ask()
        sample(trial)
        trial.set_user_attr("slot", f"t{slot_base + i:03d}")
        trial.report(1.0 / (i + 2), step=2)
        study.tell(trial, 1.0 / (i + 1))
    return study.get_trials()


# -- study.enqueue ---------------------------------------------------------------------------------------


def test_enqueued_configurations_run_first_in_order_and_once():
    seed_51 = {"training.lora.scope": ["llm"], "training.lora.r": 16, "training.learning_rate.llm": 2.0e-4}
    seed_52 = {"training.lora.scope": ["llm", "vision"], "training.learning_rate.vision": 1.0e-5}
    spec = _spec(enqueue=[seed_51, seed_52], sampler={"type": "random", "seed": 0})
    study = optuna.create_study()
    trials = _run_trials(study, spec, 3)

    first, second, third = (space.decode(spec, t.params) for t in trials)
    assert first == seed_51
    assert second["training.lora.scope"] == ["llm", "vision"]
    assert second["training.learning_rate.vision"] == 1.0e-5
    assert second["training.lora.r"] in (8, 16), "paths a configuration leaves out are sampled"
    assert [t.user_attrs.get(warm.ENQUEUED) for t in trials] == [0, 1, None]
    assert warm.enqueue_next(study, spec) is None and not study.get_trials(
        states=(optuna.trial.TrialState.WAITING,)
    )


def test_a_resumed_study_queues_only_what_no_trial_has_run():
    configs = [{"training.lora.r": 8}, {"training.lora.r": 16}, {"training.lora.r": 8}]
    spec = _spec(enqueue=configs)
    study = optuna.create_study()
    _run_trials(study, spec, 1)
    # An interrupted trial re-asked through the queue (as StudySearcher.suggest does) gets its own params.
    study.enqueue_trial(
        {"training.lora.r": 8, "training.lora.scope": "llm", "training.learning_rate.llm": 5e-4}
    )
    resumed = study.ask()
    space.define_by_run(spec)(resumed)
    assert resumed.params["training.learning_rate.llm"] == 5e-4
    assert warm.enqueue_next(study, spec) == 1


def test_enqueue_mistakes_name_the_configuration_and_the_path(tmp_path):
    bad = [
        {"training.lora.r": 7},
        {"training.lora.scope": ["llm"], "training.learning_rate.vision": 1.0e-5},
        {"training.lora.dropout": 0.1},
        {"training.learning_rate.llm": 1.0},
    ]
    with pytest.raises(UserErrors) as caught:
        _spec(enqueue=bad)
    assert [str(e) for e in caught.value.errors] == [
        "study.enqueue[0]: training.lora.r: 7 is outside choice [8, 16]",
        "study.enqueue[1]: training.learning_rate.vision: scope ['llm'] does not train vision",
        "study.enqueue[2]: training.lora.dropout is not searched (search: training.lora.scope, "
        "training.lora.r, training.learning_rate.llm, training.learning_rate.vision)",
        "study.enqueue[3]: training.learning_rate.llm: 1.0 is outside loguniform [0.0001, 0.001]",
    ]


def test_scope_study_ships_the_seeds_two_configurations():
    spec = spec_lib.load(ROOT / "search_spaces" / "scope_study.yaml")
    first, second = (spec.with_values(config) for config in spec.study.enqueue)
    assert (first.training.lora.scope, first.training.lora.r, first.training.lora.lora_alpha) == (
        ["llm"],
        16,
        32,
    )
    assert (first.training.learning_rate.llm, first.training.quantization) == (2.0e-4, "none")
    assert (second.training.lora.scope, second.training.lora.r, second.training.lora.lora_alpha) == (
        ["llm", "vision"],
        8,
        16,
    )
    assert (second.training.learning_rate.llm, second.training.quantization) == (1.0e-4, "nf4")


# -- study.warm_start ------------------------------------------------------------------------------------


def _earlier(tmp_path: Path, search=SEARCH, n: int = 4, enqueue=()) -> Path:
    earlier_spec = _spec(search=search, sampler={"type": "random", "seed": 1}, enqueue=list(enqueue))
    directory = tmp_path / "earlier" / "s"
    _run_trials(_journal_study(directory, earlier_spec), earlier_spec, n)
    summary = {"study": "s", "objective": {"metric": "eval/loss", "mode": "min"}, "trials": []}
    (directory / "summary.json").write_text(json.dumps(summary))
    return directory


def test_warm_start_gives_the_sampler_the_earlier_trials(tmp_path):
    earlier = _earlier(tmp_path)
    spec = _spec(warm_start=[str(earlier)])
    study = _journal_study(tmp_path / "now" / "s", spec)
    assert warm.warm_start(study, spec, log=lambda line: None) == 4

    added = study.get_trials()
    before = optuna.load_study(
        study_name="s", storage=JournalStorage(JournalFileBackend(str(earlier / "optuna.journal")))
    ).get_trials()
    assert [(t.params, t.value, t.intermediate_values) for t in added] == [
        (t.params, t.value, t.intermediate_values) for t in before
    ]
    assert {t.user_attrs[warm.WARM_START] for t in added} == {str(earlier)}
    assert all("slot" not in t.user_attrs for t in added), "earlier slots are not this study's trials"
    assert warm.warm_start(study, spec, log=lambda line: None) == 0, "only a study with no trials yet"


@pytest.mark.parametrize(
    ("search", "message"),
    [
        (
            {**SEARCH, "training.lora.r": {"choice": [8, 16, 32]}},
            "training.lora.r = 32 (trial",
        ),
        (
            {**SEARCH, "training.lora.dropout": {"uniform": [0.0, 0.2]}},
            "searched training.lora.dropout, which this study does not search",
        ),
    ],
)
def test_an_incompatible_earlier_study_is_one_line_naming_the_parameter(tmp_path, search, message):
    earlier = _earlier(
        tmp_path, search=search, n=3, enqueue=[{"training.lora.r": 32}] if "32" in message else []
    )
    spec = _spec(warm_start=[str(earlier)])
    study = _journal_study(tmp_path / "now" / "s", spec)
    with pytest.raises(UserError, match=r"^study\.warm_start\[0\]: ") as caught:
        warm.warm_start(study, spec, log=lambda line: None)
    assert message in str(caught.value) and "\n" not in str(caught.value)
    assert study.get_trials() == [], "nothing is added from an incompatible study"


def test_warm_start_from_a_folder_that_is_no_study(tmp_path):
    spec = _spec(warm_start=[str(tmp_path)])
    study = _journal_study(tmp_path / "now" / "s", spec)
    with pytest.raises(UserError, match=r"study\.warm_start\[0\]: .*no optuna.journal"):
        warm.warm_start(study, spec, log=lambda line: None)


# -- the verdict and the page, from a summary ------------------------------------------------------------


def _record(tmp_path: Path, rows) -> object:
    from raylora.record.states import TrialState
    from raylora.record.trials import StudyRecord, TrialRecord

    record = StudyRecord(tmp_path, "demo", "eval/loss", "min")
    for i, (scope, quant, value, memory, state) in enumerate(rows):
        params = {
            "training.lora.scope": scope,
            "training.quantization": quant,
            "training.lora.r": 8 * (i + 1),
        }
        params["training.learning_rate.llm"] = 1e-4 * (i + 1)
        trial_cost = {"cost/peak_mem_gb": memory, "cost/accelerator_hours": memory / 100}
        record.trials[f"t{i:03d}"] = TrialRecord(
            f"t{i:03d}", TrialState(state), params, value, 10, cost=trial_cost
        )
    return record


ROWS = [
    (["llm"], "none", 1.00, 2.0, "COMPLETE"),
    (["llm"], "nf4", 1.10, 1.0, "COMPLETE"),
    (["llm", "vision"], "none", 0.80, 3.0, "COMPLETE"),
    (["llm", "vision"], "nf4", 0.90, 1.5, "COMPLETE"),
    (["llm", "vision", "projector"], "none", 0.70, 4.0, "PRUNED"),
]


def test_the_verdict_compares_scopes_and_quantization_with_numbers(tmp_path):
    from raylora.tracking import verdict

    lines = verdict.verdict(list(_record(tmp_path, ROWS).trials.values()), "eval/loss", "min")
    assert lines[0] == (
        "Best of each scope: LLM-only 1 (t000, 2 GB peak; 2 complete); "
        "+vision 0.8 (t002, 3 GB peak; 2 complete)."
    )
    # scope means 1.05 and 0.85 (sd 0.0707 each): Welch dof 2, t = 4.303, half-width 0.3043; quantization
    # means 0.9 and 1.0 (sd 0.1414 each): half-width 0.6085
    assert lines[1] == (
        "+vision against LLM-only: best eval/loss -0.2 (better); group means differ by -0.2, "
        "95% interval [-0.5043, +0.1043]; for 1.50× the memory and 1.50× the accelerator-hours."
    )
    assert lines[3] == (
        "nf4 against full precision: best eval/loss +0.1 (worse); group means differ by +0.1, 95% interval "
        "[-0.5085, +0.7085]; for 0.50× the memory and 0.50× the accelerator-hours (50% memory saved)."
    )
    assert (
        lines[4]
        == "Best settings by scope: LLM-only: r=8, lr llm 0.0001 (t000); +vision: r=24, lr llm 0.0003 (t002)."
    )
    assert "whether +vision beats LLM-only (the interval includes 0)" in lines[-1]
    assert "no paired test between the group bests on the same eval items" in lines[-1]
    assert "+vision+projector" not in " ".join(lines[:3]), "a pruned trial does not compete"


def test_the_group_bests_are_paired_on_the_same_eval_records(tmp_path):
    from raylora.tracking import verdict

    def items(right: int) -> dict:  # 10 records, the first `right` of them clicked right
        return {f"eval.jsonl:{i + 1}": [i < right, None, None, False] for i in range(10)}

    trials = list(_record(tmp_path, ROWS).trials.values())
    lines = verdict.verdict(
        trials, "eval/loss", "min", {"t000": items(5), "t002": items(8), "t003": items(6)}
    )
    # +vision (t002) against LLM-only (t000): 3 records only t002 got right, none the other way: exact
    # McNemar p = 2 × 0.5³ = 0.25. nf4 (t003) against full precision (t002): 0 and 2, p = 2 × 0.5² = 0.5.
    assert lines[1] == (
        "+vision against LLM-only: best eval/loss -0.2 (better); group means differ by -0.2, "
        "95% interval [-0.5043, +0.1043]; paired on the same 10 eval records, eval/click_acc 0.8 against "
        "0.5 (+30.0 points, McNemar p = 0.25); for 1.50× the memory and 1.50× the accelerator-hours."
    )
    assert (
        "paired on the same 10 eval records, eval/click_acc 0.6 against 0.8 (-20.0 points, McNemar p = 0.5)"
        in lines[3]
    )
    assert "no paired test" not in lines[-1]


def test_the_page_is_one_self_contained_file(tmp_path):
    from html.parser import HTMLParser

    from raylora.tracking import html_report

    record = _record(tmp_path, ROWS)
    study = optuna.create_study()
    for trial in record.trials.values():
        ot = study.ask()
        ot.suggest_categorical("training.lora.scope", ["llm", "llm+vision", "llm+vision+projector"])
        ot.suggest_int("training.lora.r", 8, 40, step=8)
        ot.report(trial.value + 0.1, 5)
        study.tell(ot, trial.value)
        trial.curve = {"5": trial.value + 0.1, "10": trial.value}  # what the study records of each report
    page = html_report.write(tmp_path / "index.html", record, study).read_text()

    class Links(HTMLParser):
        found: list = []

        def handle_starttag(self, tag, attrs):
            self.found += [(tag, k, v) for k, v in attrs if k in ("src", "href") or tag in ("script", "link")]

    parser = Links()
    parser.feed(page)
    assert parser.found == [], "nothing to fetch: no scripts, stylesheets, images or links out"
    assert page.count("<svg") == 6, "quality/cost, groups, importances, intermediate, parallel, timeline"
    assert "+vision against LLM-only: best eval/loss -0.2 (better)" in page


# -- several objectives ----------------------------------------------------------------------------------


TWO = {
    "objectives": [{"metric": "eval/loss", "mode": "min"}, {"metric": "cost/peak_mem_gb", "mode": "min"}],
    "constraints": {"cost/peak_mem_gb": "<= 3"},
}


def test_the_front_is_the_feasible_complete_trials_nothing_beats_on_every_objective(tmp_path):
    from raylora.record.objectives import pareto_front

    record = _record(tmp_path, ROWS)
    for t in record.trials.values():
        t.values = {"eval/loss": t.value, "cost/peak_mem_gb": t.cost["cost/peak_mem_gb"]}
    goals = [("eval/loss", "min"), ("cost/peak_mem_gb", "min")]
    trials = list(record.trials.values())
    # (loss, GB): t000 (1.0, 2) t001 (1.1, 1) t002 (0.8, 3) t003 (0.9, 1.5) t004 pruned (0.7, 4)
    assert pareto_front(trials, goals, {}) == ["t001", "t002", "t003"]
    assert pareto_front(trials, goals, {"cost/peak_mem_gb": ("<=", 2.5)}) == ["t001", "t003"]
    assert pareto_front(trials, [("eval/loss", "max"), ("cost/peak_mem_gb", "max")], {}) == [
        "t000",
        "t001",
        "t002",
    ]


def test_a_two_objective_trial_is_told_both_values_and_its_constraint():
    from raylora.record.objectives import tell_complete
    from raylora.record.states import TrialState
    from raylora.record.trials import TrialRecord

    spec = _spec(**TWO, sampler={"type": "nsga2", "seed": 0})
    assert spec.study.objective.metric == "eval/loss", "the first objective is the one ASHA prunes on"
    study = optuna.create_study(directions=["minimize", "minimize"])
    for memory, excess in ((2.0, -1.0), (4.5, 1.5)):
        ot_trial = study.ask()
        trial = TrialRecord("t", value=0.5, cost={"cost/peak_mem_gb": memory})
        assert tell_complete(study, ot_trial, spec, trial) == TrialState.COMPLETE
        assert trial.values == {"eval/loss": 0.5, "cost/peak_mem_gb": memory}
        frozen = study.trials[-1]
        assert frozen.values == [0.5, memory] and frozen.constraints == {"cost/peak_mem_gb": excess}
    unreported = TrialRecord("t", value=0.5)
    assert tell_complete(study, study.ask(), spec, unreported) == TrialState.FAILED
    assert unreported.error == "the objective cost/peak_mem_gb was never reported"


def test_objective_mistakes_are_reported_together():
    with pytest.raises(UserErrors) as caught:
        _spec(
            objective={"metric": "eval/click_acc", "mode": "max"},
            objectives=[{"metric": "eval/loss"}, {"metric": "eval/loss"}],
            constraints={"cost/peak": "<= 40", "cost/peak_mem_gb": "< 3"},
        )
    assert [str(e) for e in caught.value.errors] == [
        "study.objectives: give objective or objectives, not both",
        "study.objectives: each metric once, got ['eval/loss', 'eval/loss']",
        "study.constraints.cost/peak: unknown metric (allowed: eval/loss, eval/click_acc, "
        "eval/format_error_rate, eval/type_acc, eval/step_acc, train/loss, cost/peak_mem_gb, "
        "cost/accelerator_hours, cost/tokens_per_s, cost/trainable_params)",
        'study.constraints.cost/peak_mem_gb: must be "<= number" or ">= number", got \'< 3\'',
    ]
    with pytest.raises(UserError, match="study.sampler.type: nsga2 is for study.objectives"):
        _spec(sampler={"type": "nsga2"})


# -- one real study (Ray, Optuna journal, MLflow SQLite), shared by the tests below ----------------------

STUDY_SPEC = {
    "study": {
        "name": "decide",
        "objectives": [{"metric": "eval/loss", "mode": "min"}, {"metric": "cost/peak_mem_gb", "mode": "min"}],
        "constraints": {"cost/peak_mem_gb": "<= 64"},
        "num_trials": 3,
        "max_concurrent_trials": 1,
        "sampler": {"type": "random", "seed": 3},
        "scheduler": {"type": "fifo"},
        "enqueue": [
            {"training.lora.scope": ["llm", "vision"], "training.lora.r": 4},
            {"training.lora.scope": ["llm"], "training.lora.r": 4},
        ],
    },
    "data": {"image": {"min_pixels": 4096, "max_pixels": 65536}, "max_length": 512, "eval_samples": 8},
    "resources": {"workers_per_trial": 1, "cpus_per_worker": 0.5},
    "training": {"max_steps": 4, "eval_every": 2, "per_device_train_batch_size": 2, "click_eval_samples": 0},
    "search": {
        "training.lora.scope": {"choice": [["llm"], ["llm", "vision"]]},
        "training.lora.r": {"choice": [4, 8]},
    },
}


def _search(tmp: Path, spec: dict, *args: str):
    import subprocess
    import sys

    import yaml

    path = tmp / f"{spec['study']['name']}.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    tracking = f"sqlite:///{tmp}/mlflow.db"
    command = [sys.executable, "-m", "raylora", "search", str(path), "--storage", str(tmp / "st")]
    return subprocess.run(
        [*command, "--tracking-uri", tracking, *args], capture_output=True, text=True, cwd=ROOT, timeout=900
    )


EARLIER_VALUES = [[0.9, 3.0], [0.7, 5.0]]
"""The (eval/loss, cost/peak_mem_gb) of the two trials of the earlier study the shared study warm-starts
from (made with Optuna alone: what the sampler is lent does not need training)."""


def _earlier_two_objective_study(directory: Path) -> Path:
    spec = spec_lib.build({**STUDY_SPEC, "study": {**STUDY_SPEC["study"], "name": "earlier", "enqueue": []}})
    directory.mkdir(parents=True)
    study = optuna.create_study(
        storage=JournalStorage(JournalFileBackend(str(directory / "optuna.journal"))),
        study_name="earlier",
        directions=["minimize", "minimize"],
        sampler=optuna.samplers.RandomSampler(seed=0),
    )
    sample = space.define_by_run(spec)
    for i, values in enumerate(EARLIER_VALUES):
        trial = study.ask()
        sample(trial)
        trial.set_user_attr("slot", f"t{i:03d}")
        study.tell(trial, values)
    return directory


@pytest.fixture(scope="session")
def searched(built_once):
    """One three-trial study of two objectives (eval/loss against cost/peak_mem_gb), its first two trials
    enqueued, warm-started from an earlier study's two trials, run once for the session; returns
    (folder, summary, tracking URI)."""

    def study(tmp: Path) -> None:
        earlier = _earlier_two_objective_study(tmp / "earlier" / "earlier")
        spec = {**STUDY_SPEC, "study": {**STUDY_SPEC["study"], "warm_start": [str(earlier)]}}
        proc = _search(tmp, spec)
        assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
        (tmp / "stdout.txt").write_text(proc.stdout)

    tmp = built_once("decide", study)
    directory = tmp / "st" / "decide"
    return directory, json.loads((directory / "summary.json").read_text()), f"sqlite:///{tmp}/mlflow.db"


@pytest.mark.slow
def test_the_enqueued_configuration_is_the_first_trial(searched):
    _, summary, _ = searched
    trials = {t["trial_id"]: t for t in summary["trials"]}
    assert trials["t000"]["params"] == {"training.lora.scope": ["llm", "vision"], "training.lora.r": 4}
    assert trials["t001"]["params"] == {"training.lora.scope": ["llm"], "training.lora.r": 4}
    assert [t["state"] for t in summary["trials"]] == ["COMPLETE"] * 3


@pytest.mark.slow
def test_every_trial_reports_its_cost_in_summary_mlflow_and_leaderboard(searched):
    import csv

    from mlflow import MlflowClient

    directory, summary, uri = searched
    for trial in summary["trials"]:
        c = trial["cost"]
        assert set(c) == {
            "cost/peak_mem_gb",
            "cost/accelerator_hours",
            "cost/tokens_per_s",
            "cost/trainable_params",
        }
        assert 0.1 < c["cost/peak_mem_gb"] < 64, "peak RSS of a CPU worker, in GB"
        assert 0 < c["cost/accelerator_hours"] < 0.5 * 1 / 6, "0.5 CPU for well under 10 minutes"
        assert c["cost/tokens_per_s"] > 0 and c["cost/trainable_params"] > 0
    by_id = {t["trial_id"]: t for t in summary["trials"]}
    vision, llm = by_id["t000"]["cost"], by_id["t001"]["cost"]  # both r=4
    assert vision["cost/trainable_params"] > llm["cost/trainable_params"]

    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("decide")
    runs = client.search_runs([experiment.experiment_id], "tags.`raylora.role` = 'trial'")
    for run in runs:
        trial = by_id[run.data.tags["raylora.trial_id"]]
        assert run.data.metrics["cost/peak_mem_gb"] == pytest.approx(trial["cost"]["cost/peak_mem_gb"])
        assert run.data.metrics["cost/trainable_params"] == trial["cost"]["cost/trainable_params"]
    with (directory / "report" / "leaderboard.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert {r["trial_id"]: float(r["cost/peak_mem_gb"]) for r in rows} == pytest.approx(
        {t["trial_id"]: t["cost"]["cost/peak_mem_gb"] for t in summary["trials"]}
    )


@pytest.mark.slow
def test_the_pareto_front_is_recomputed_from_the_trials_values(searched):
    from mlflow import MlflowClient

    directory, summary, uri = searched
    complete = [t for t in summary["trials"] if t["state"] == "COMPLETE"]
    for t in complete:
        assert t["values"] == {"eval/loss": t["value"], "cost/peak_mem_gb": t["cost"]["cost/peak_mem_gb"]}

    def dominates(a, b) -> bool:
        pairs = [(a["values"][m], b["values"][m]) for m in ("eval/loss", "cost/peak_mem_gb")]
        return all(x <= y for x, y in pairs) and any(x < y for x, y in pairs)

    expected = sorted(t["trial_id"] for t in complete if not any(dominates(o, t) for o in complete))
    assert summary["pareto_front"] == expected and expected
    assert summary["objectives"][1] == {"metric": "cost/peak_mem_gb", "mode": "min"}

    journal = optuna.load_study(
        study_name="decide", storage=JournalStorage(JournalFileBackend(str(directory / "optuna.journal")))
    )
    own = optuna.create_study(directions=journal.directions)  # Optuna's front of the study's own trials
    own.add_trials([t for t in journal.get_trials() if "slot" in t.user_attrs])  # not the lent ones
    assert sorted(t.user_attrs["slot"] for t in own.best_trials) == expected
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("decide")
    tagged = client.search_runs([experiment.experiment_id], "tags.`raylora.pareto` = 'true'")
    assert sorted(r.data.tags["raylora.trial_id"] for r in tagged) == expected
    page = (directory / "report" / "index.html").read_text()
    assert "Pareto front" in page
    assert summary["scheduler"] == "fifo"  # the spec's study.scheduler.type, named in the summary and page
    assert "No early stopping (fifo): every trial runs to its end." in page
    # The title names both objectives (it named the first alone), as do the leaderboard and the terminal's.
    title = "decide: eval/loss (min), cost/peak_mem_gb (min)"
    assert f"<title>{title}</title>" in page
    assert (directory / "report" / "leaderboard.md").read_text().startswith(f"# {title}")
    assert title in (directory.parent.parent / "stdout.txt").read_text()


@pytest.mark.slow
def test_the_report_page_is_written_and_logged_to_the_study_run(searched):
    from mlflow import MlflowClient

    directory, _, uri = searched
    page = (directory / "report" / "index.html").read_text()
    assert "Best of each scope: LLM-only" in page and "+vision against LLM-only" in page
    assert page.count("<svg") >= 4
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("decide")
    (parent,) = client.search_runs([experiment.experiment_id], "tags.`raylora.role` = 'study'")
    assert "report/index.html" in [f.path for f in client.list_artifacts(parent.info.run_id, "report")]


@pytest.mark.slow
def test_promote_cheapest_within_matches_a_recomputation_from_the_summary(searched):
    import subprocess
    import sys

    _, summary, uri = searched
    complete = [t for t in summary["trials"] if t["state"] == "COMPLETE"]
    best = min(t["value"] for t in complete)
    values = sorted(t["value"] for t in complete)
    tolerance = (values[1] - best) * 1.01  # the best and the runner-up are within it
    within = [t for t in complete if t["value"] <= best + tolerance]
    expected = min(within, key=lambda t: (t["cost"]["cost/peak_mem_gb"], t["value"]))
    command = [
        sys.executable,
        "-m",
        "raylora",
        "promote",
        "best",
        "--tracking-uri",
        uri,
        "--experiment",
        "decide",
    ]
    policy = ["--policy", "cheapest-within", "--tolerance", repr(tolerance), "--cost", "cost/peak_mem_gb"]
    proc = subprocess.run([*command, *policy], capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"trial {expected['trial_id']}," in proc.stdout.splitlines()[0], proc.stdout

    from mlflow import MlflowClient

    version = MlflowClient(uri).get_model_version_by_alias("decide", "champion")
    assert version.tags["raylora.trial_id"] == expected["trial_id"]
    assert version.tags["raylora.promotion.policy"] == "cheapest-within"
    assert float(version.tags["raylora.promotion.tolerance"]) == tolerance


@pytest.mark.slow
def test_a_warm_started_study_gives_its_sampler_the_earlier_trials(searched):
    directory, summary, _ = searched
    tmp = directory.parent.parent  # the session study's folder
    said = (tmp / "stdout.txt").read_text()
    assert "warm start: the sampler begins with 2 finished trial(s)" in said, said
    storage = JournalStorage(JournalFileBackend(str(directory / "optuna.journal")))
    trials = optuna.load_study(study_name="decide", storage=storage).get_trials()
    lent, own = trials[:2], trials[2:]
    assert [t.values for t in lent] == EARLIER_VALUES
    assert all(t.user_attrs[warm.WARM_START] == str(tmp / "earlier" / "earlier") for t in lent)
    assert [t.user_attrs["slot"] for t in own] == ["t000", "t001", "t002"]
    assert [t["trial_id"] for t in summary["trials"]] == ["t000", "t001", "t002"], (
        "lent trials are not its own"
    )


# -- staged studies: training.init_adapter ---------------------------------------------------------------


def test_init_adapter_names_a_folder_or_the_best_of_an_earlier_study(tmp_path):
    from raylora.train import init_adapter

    adapter = tmp_path / "st" / "stage1" / "runs" / "t001" / "adapter"
    adapter.mkdir(parents=True)
    (adapter / "adapter_model.safetensors").write_bytes(b"")
    summary = {"study": "stage1", "best_trial": {"trial_id": "t001", "adapter_path": str(adapter)}}
    (tmp_path / "st" / "stage1" / "summary.json").write_text(json.dumps(summary))
    assert init_adapter.resolve("study:stage1:best", str(tmp_path / "st")) == str(adapter)
    assert init_adapter.resolve(str(adapter), "unused") == str(adapter)
    spec = spec_lib.build({"training": {"init_adapter": "study:stage1:best"}})
    assert init_adapter.with_resolved(spec, str(tmp_path / "st")).training.init_adapter == str(adapter)
    for ref, message in [
        ("study:stage0:best", "no study 'stage0'"),
        ("study:stage1:worst", "must be a folder or study:NAME:best"),
        (str(tmp_path), "no adapter_model.safetensors there"),
        ("s3://bucket/adapter", "give a local or shared folder"),
    ]:
        with pytest.raises(UserError, match=f"^training.init_adapter: .*{re.escape(message)}"):
            init_adapter.resolve(ref, str(tmp_path / "st"))


@pytest.mark.slow
def test_a_stage_two_trial_starts_from_the_stage_one_adapter(tmp_path):
    import torch
    from safetensors.torch import load_file

    from raylora.errors import TrialError
    from raylora.train import LocalSession, train

    fast = ["training.eval_every=1", "data.eval=null", "study.objective.metric=train/loss"]  # no evaluation
    quickstart = ROOT / "search_spaces" / "quickstart.yaml"
    stage1 = spec_lib.load(quickstart, [*fast, "training.max_steps=2", "training.lora.scope=[llm]"])
    train(stage1, LocalSession(tmp_path / "s1", log=lambda line: None))
    earlier = load_file(str(tmp_path / "s1" / "adapter" / "adapter_model.safetensors"))
    assert any(k.endswith("lora_B.weight") and v.abs().sum() > 0 for k, v in earlier.items())

    # One step at a learning rate of 1e-12 leaves the LLM's LoRA where stage 1 left it.
    stage2 = spec_lib.load(
        quickstart,
        [
            *fast,
            "training.max_steps=1",
            "training.lora.scope=[llm, vision]",
            "training.learning_rate.llm=1.0e-12",
            f"training.init_adapter={tmp_path / 's1' / 'adapter'}",
        ],
    )
    train(stage2, LocalSession(tmp_path / "s2", log=lambda line: None))
    later = load_file(str(tmp_path / "s2" / "adapter" / "adapter_model.safetensors"))
    for key, value in earlier.items():
        torch.testing.assert_close(later[key], value, atol=1e-8, rtol=0)
    assert any("visual" in k for k in set(later) - set(earlier)), "the vision scope is new in stage 2"
    targets = json.loads((tmp_path / "s2" / "targets.json").read_text())
    assert targets["init_adapter"]["loaded"] == len(earlier) and targets["init_adapter"]["fresh"] > 0

    other_rank = spec_lib.load(
        quickstart,
        [
            *fast,
            "training.max_steps=1",
            "training.lora.r=8",
            f"training.init_adapter={tmp_path / 's1' / 'adapter'}",
        ],
    )
    with pytest.raises(TrialError, match="does not fit this trial's LoRA"):
        train(other_rank, LocalSession(tmp_path / "s3", log=lambda line: None))
