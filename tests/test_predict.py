"""`raylora predict`: a trained adapter (or a base model) answers a screenshot or a whole dataset, the way
the promoted MLflow model does."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import raylora
from raylora import builtin

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def trained(built_once) -> Path:
    """A trial of two steps, trained once for the session."""
    # No evaluation while training: these tests score the adapter themselves.
    overrides = [
        "training.max_steps=2",
        "training.eval_every=2",
        "data.eval=null",
        "study.objective.metric=train/loss",
    ]
    spec = raylora.load_spec(ROOT / "search_spaces" / "quickstart.yaml", overrides)
    return built_once("predict-trained", lambda out: raylora.train_trial(spec, out))


def _eval_file() -> Path:
    return Path(builtin.resolve_data(builtin.GUI_DATA, "eval"))


@pytest.mark.slow
def test_one_screenshot_gets_the_models_text_and_its_click(trained, raylora_cli):
    shot = _eval_file().parent / "shots" / "64.png"
    code, out, err = raylora_cli(
        "predict", str(trained), "--image", str(shot), "--instruction", "click the OK button"
    )
    assert code == 0, err
    answer, click = out.splitlines()[:2]
    assert answer.startswith("answer: ")
    assert click.startswith("click: "), out
    from raylora.train.inference import Predictor

    # The same answer as the code path the promoted MLflow model runs.
    predictor = Predictor.load(trained)
    expected = predictor.click(shot, "click the OK button")
    # transformers' own layers, not kernels the Hub would be asked for on a GPU (offline nodes failed there).
    assert not predictor.model.get_base_model().use_kernels
    assert answer == f"answer: {json.dumps(expected, ensure_ascii=False)}"


@pytest.mark.slow
def test_a_dataset_gets_one_jsonl_line_per_record(trained, tmp_path, raylora_cli):
    out = tmp_path / "answers.jsonl"
    code, _, err = raylora_cli(
        "predict", str(trained / "adapter"), "--data", str(_eval_file()), "--output", str(out)
    )
    assert code == 0, err
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["index"] for r in rows] == list(range(len(_eval_file().read_text().splitlines())))
    assert all(isinstance(r["output"], str) and (r["click"] is None or len(r["click"]) == 2) for r in rows)


@pytest.mark.slow
def test_a_base_model_alone_answers_too(raylora_cli):
    shot = _eval_file().parent / "shots" / "64.png"
    code, out, err = raylora_cli(
        "predict", builtin.TINY_MODEL, "--image", str(shot), "--instruction", "click the OK button"
    )
    assert code == 0 and out.startswith("answer: "), err


@pytest.mark.parametrize(
    "args, message",
    [
        (["predict", "nowhere"], "error: predict: give --image and --instruction, or --data FILE"),
        (["predict", "no such model", "--data", "x.jsonl"], "error: predict: no such model: not a folder"),
        (["predict", "builtin:tiny-qwen3-vl", "--image", "no.png", "--instruction", "x"], "error: --image"),
    ],
)
def test_mistakes_are_one_line(args, message, raylora_cli):
    code, _, err = raylora_cli(*args)
    assert code == 2 and err.startswith(message) and err.count("\n") == 1, err


@pytest.mark.slow
def test_eval_scores_a_trained_adapter(trained, tmp_path, raylora_cli):
    out = tmp_path / "answers.jsonl"
    code, stdout, err = raylora_cli(
        "eval", str(trained), "--data", str(_eval_file()), "--limit", "3", "--max-new-tokens", "8",
        "--predictions-out", str(out), "--json",
    )  # fmt: skip
    assert code == 0, err
    report = json.loads(stdout)
    assert (report["n"], report["click_n"]) == (3, 3)
    assert len(out.read_text().splitlines()) == 3
