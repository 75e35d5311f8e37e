"""The decision and its cost: warm-started studies, cost metrics, and the report that decides (real Optuna,
real MLflow stores; the study end to end is one slow test module-scoped run)."""

from __future__ import annotations

import json
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
    return optuna.create_study(storage=storage, study_name=spec.study.name, direction="minimize")


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


def _earlier(tmp_path: Path, search=SEARCH, n: int = 4) -> Path:
    earlier_spec = _spec(search=search, sampler={"type": "random", "seed": 1})
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
    earlier = _earlier(tmp_path, search=search, n=6)
    spec = _spec(warm_start=[str(earlier)])
    study = _journal_study(tmp_path / "now" / "s", spec)
    if "32" in message and not any(t.params["training.lora.r"] == 32 for t in _optuna(earlier)):
        pytest.fail("the earlier random study never sampled r=32; pick another seed")
    with pytest.raises(UserError, match=r"^study\.warm_start\[0\]: ") as caught:
        warm.warm_start(study, spec, log=lambda line: None)
    assert message in str(caught.value) and "\n" not in str(caught.value)
    assert study.get_trials() == [], "nothing is added from an incompatible study"


def test_warm_start_from_a_folder_that_is_no_study(tmp_path):
    spec = _spec(warm_start=[str(tmp_path)])
    study = _journal_study(tmp_path / "now" / "s", spec)
    with pytest.raises(UserError, match=r"study\.warm_start\[0\]: .*no optuna.journal"):
        warm.warm_start(study, spec, log=lambda line: None)


def _optuna(directory: Path) -> list:
    storage = JournalStorage(JournalFileBackend(str(directory / "optuna.journal")))
    return optuna.load_study(study_name="s", storage=storage).get_trials()
