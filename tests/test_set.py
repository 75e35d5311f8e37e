"""``--set`` and ranks mean what they say (issue 26): ``--set`` on a searched path pins it; the rank check
uses the values a command trains with; ``validate`` checks ranks from config.json widths; a search space
smaller than ``num_trials`` trains each configuration once."""

from __future__ import annotations

from pathlib import Path

import pytest

from raylora import spec as spec_lib
from raylora.errors import UserError
from raylora.spec import space
from raylora.spec.load import load_pinned

SPEC = """
study: {name: s, num_trials: 5, enqueue: [{training.lora.r: 8, training.lora.dropout: 0.0}]}
training: {lora: {r: 8, scope: [llm]}}
search:
  training.lora.r: {choice: [4, 8]}
  training.lora.dropout: {choice: [0.0, 0.1]}
"""


def _write(tmp_path, text: str = SPEC):
    path = tmp_path / "spec.yaml"
    path.write_text(text)
    return path


def test_set_on_a_searched_path_pins_it_and_takes_it_out_of_the_search(tmp_path):
    spec, pinned = load_pinned(_write(tmp_path), ["training.lora.r=16"])
    assert pinned == ["training.lora.r"]
    assert spec.training.lora.r == 16
    assert list(spec.search) == ["training.lora.dropout"]
    assert spec.study.enqueue == [{"training.lora.dropout": 0.0}]  # the pinned path left the enqueued ones
    _, unpinned = load_pinned(_write(tmp_path), ["training.max_steps=4"])
    assert unpinned == []


def test_the_plan_says_which_paths_set_pinned(tmp_path):
    from typer.testing import CliRunner

    from raylora.cli import app

    storage = tmp_path / "st"
    result = CliRunner().invoke(
        app,
        [
            "search",
            str(_write(tmp_path)),
            "--set",
            "training.lora.r=2",
            "--storage",
            str(storage),
            "--resume",
        ],
    )
    assert "pinned by --set: training.lora.r = 2 (not searched)" in result.output
    assert isinstance(result.exception, UserError)  # nothing to resume: stopped before Ray
    assert str(result.exception) == f"--resume: no study named s in {storage}"


def _spec(search: dict, num_trials: int = 20, scope=("llm",)):
    return spec_lib.build(
        {
            "study": {"name": "s", "num_trials": num_trials},
            "training": {"lora": {"scope": list(scope)}},
            "search": search,
        }
    )


def test_a_space_counts_its_configurations_with_learning_rates_only_where_trained():
    assert space.size(_spec({})) == 1
    assert (
        space.size(
            _spec({"training.lora.r": {"choice": [4, 8]}, "training.max_steps": {"int": [2, 6], "step": 2}})
        )
        == 6
    )
    conditional = {
        "training.lora.scope": {"choice": [["llm"], ["llm", "vision"]]},
        "training.learning_rate.llm": {"choice": [1e-3]},
        "training.learning_rate.vision": {"choice": [1e-4, 1e-5]},
    }
    assert space.size(_spec(conditional)) == 1 + 2  # llm alone never samples a vision rate
    assert space.size(_spec({"training.lora.dropout": {"uniform": [0.0, 0.1]}})) is None
    assert space.trials(_spec(conditional, num_trials=5)) == 3
    assert space.trials(_spec(conditional, num_trials=2)) == 2
    assert space.trials(_spec({"training.lora.dropout": {"uniform": [0.0, 0.1]}}, num_trials=7)) == 7


def test_a_space_smaller_than_the_study_samples_each_configuration_once():
    import optuna

    from raylora.study.optuna_searcher import _sampler

    spec = _spec({"training.lora.r": {"choice": [4, 8]}, "training.lora.dropout": {"choice": [0.0, 0.1]}}, 9)
    study = optuna.create_study(sampler=_sampler(spec, seed=0))
    sample = space.define_by_run(spec)
    seen = []
    for _ in range(space.trials(spec)):
        trial = study.ask()
        sample(trial)
        seen.append(tuple(sorted(trial.params.items())))
        if len(seen) % 2:  # one left running while the next is asked, as concurrent trials are
            continue
        for t in study.get_trials(states=(optuna.trial.TrialState.RUNNING,)):
            study.tell(t.number, 1.0)
    assert len(seen) == 4 and len(set(seen)) == 4


# -- ranks ------------------------------------------------------------------------------------------

RANKS = """
study: {name: s}
training: {lora: {r: %s, scope: [llm]}}
search:
  training.lora.r: {choice: %s}
"""


def test_train_checks_the_rank_it_trains_and_search_every_rank_it_samples(tmp_path):
    from raylora.train.preflight import check_ranks

    fixed_too_wide = spec_lib.load(_write(tmp_path, RANKS % (4096, [8, 16])))
    with pytest.raises(UserError, match=r"^training.lora.r: rank 4096 .* widest sensible rank is 32"):
        check_ranks(fixed_too_wide, sampled=False)
    check_ranks(fixed_too_wide, sampled=True)  # search trains 8 or 16, never the fixed 4096

    sampled_too_wide = spec_lib.load(_write(tmp_path, RANKS % (8, [8, 64])))
    check_ranks(sampled_too_wide, sampled=False)
    with pytest.raises(UserError, match=r"^search.training.lora.r: rank 64 "):
        check_ranks(sampled_too_wide, sampled=True)

    pinned = spec_lib.load(_write(tmp_path, RANKS % (8, [8, 16])), ["training.lora.r=50000"])
    for sampled in (False, True):
        with pytest.raises(UserError, match=r"^training.lora.r: rank 50000 "):
            check_ranks(pinned, sampled=sampled)


def test_validate_reads_the_same_narrowest_width_from_config_json_as_the_model_has():
    from raylora import builtin
    from raylora.builtin.tiny_model import widths_config
    from raylora.train import scopes
    from raylora.train.preflight import _scope_widths, leaf_widths

    config = scopes.load_config(str(builtin.ensure_tiny_model()))
    meta = scopes.meta_model(config)
    modules = dict(meta.named_modules())
    leaves = leaf_widths(widths_config())
    for word in scopes.SCOPES:
        names = scopes.resolve_scopes(meta, config.model_type, [word]).names()
        exact = min(min(modules[n].in_features, modules[n].out_features) for n in names)
        assert min(_scope_widths([word], leaves).values()) == exact, word


@pytest.mark.slow
def test_the_rank_check_measures_a_model_once_and_then_reads_its_widths(tmp_path):
    """The second check of the same config.json and targets gives the same verdict without importing
    transformers (the meta model is what made a search's start-up seconds longer); another config is
    measured again."""
    import json
    import os
    import subprocess
    import sys

    from raylora import builtin

    model = tmp_path / "model"
    model.mkdir()
    config = json.loads((Path(builtin.ensure_tiny_model()) / "config.json").read_text())
    (model / "config.json").write_text(json.dumps(config))
    spec = _write(tmp_path, RANKS % (8, [8, 64]) + f"model: {{name_or_path: {model}}}\n")
    code = (
        "import sys; from raylora import spec; from raylora.train.preflight import check_ranks\n"
        f"try: check_ranks(spec.load({str(spec)!r}), sampled=True)\n"
        "except Exception as e: print(e)\n"
        "print('transformers' in sys.modules)\n"
    )
    env = {**os.environ, "RAYLORA_HOME": str(tmp_path / "home")}

    def check() -> list[str]:
        command = [sys.executable, "-c", code]
        out = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
        return out.stdout.strip().splitlines()

    first, second = check(), check()
    assert first[0].startswith("search.training.lora.r: rank 64 "), first
    assert (first, second) == ([first[0], "True"], [first[0], "False"])
    config["text_config"]["intermediate_size"] += 2  # another model: measured, not read
    (model / "config.json").write_text(json.dumps(config))
    assert check()[-1] == "True"
    (model / "config.json").unlink()  # no config.json: no cache, and no error here (the model checks say it)
    assert check() == ["True"], "no error line: the check is left to the model checks"


def test_validate_refuses_an_absurd_rank_without_torch(tmp_path):
    import subprocess
    import sys

    path = _write(tmp_path, RANKS % (8, [8, 16]))
    code = (
        "import sys; from raylora.cli import app\n"
        f"try: app(['validate', {str(path)!r}, '--set', 'training.lora.r=50000'], standalone_mode=False)\n"
        "except Exception as e: print(e)\n"
        "print(sorted(m for m in ('torch', 'transformers') if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    lines = out.stdout.strip().splitlines()
    assert lines[0].startswith("training.lora.r: rank 50000 is above the width"), out.stdout + out.stderr
    assert lines[-1] == "[]"
