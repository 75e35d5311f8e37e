"""The command line as a user runs it: exit codes, one-line errors, shipped specs, inspect."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = sorted((ROOT / "search_spaces").glob("*.yaml"))
RAYLORA = [str(Path(sys.executable).with_name("raylora"))]  # the console script, as users type it


def raylora(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "raylora", *args], capture_output=True, text=True, cwd=cwd, timeout=300
    )


def assert_user_error(proc: subprocess.CompletedProcess, *needles: str) -> None:
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr
    for needle in needles:
        assert needle in proc.stderr, proc.stderr


@pytest.mark.slow
def test_inspect_qwen3_vl_4b_exact_counts(raylora_cli):
    code, out, err = raylora_cli(
        "inspect", str(ROOT / "tests/configs/qwen3_vl_4b.json"), "--r", "16", "--json"
    )
    assert code == 0, err
    report = json.loads(out)
    assert report["model_type"] == "qwen3_vl" and report["total_params"] == 4_437_815_808
    scopes = report["scopes"]
    assert (scopes["llm"]["modules"], scopes["llm"]["lora_params"]) == (252, 33_030_144)
    assert (scopes["vision"]["modules"], scopes["vision"]["lora_params"]) == (96, 6_291_456)
    assert (scopes["projector"]["modules"], scopes["projector"]["lora_params"]) == (2, 237_568)
    assert (scopes["deepstack"]["modules"], scopes["deepstack"]["lora_params"]) == (6, 712_704)


@pytest.mark.slow
def test_inspect_table_and_missing_model(raylora_cli):
    code, out, err = raylora_cli(
        "inspect", str(ROOT / "tests/configs/qwen2_5_vl_tiny.json"), "--scope", "vision.mlp"
    )
    assert code == 0, err
    assert "model.visual.blocks.N.mlp.gate_proj" in out
    code, _, err = raylora_cli("inspect", "no/such/config.json")
    assert code == 2 and err.count("\n") == 1 and "config not found" in err, err


@pytest.mark.parametrize("path", SHIPPED, ids=[p.name for p in SHIPPED])
def test_every_shipped_spec_validates(path):
    proc = raylora("validate", str(path))
    assert proc.returncode == 0, proc.stderr
    assert "ok" in proc.stdout


def test_validate_reports_every_error_at_once(tmp_path):
    spec = tmp_path / "bad.yaml"
    spec.write_text(
        "model: {name_or_path: ./missing-model}\n"
        "data: {train: ./missing.jsonl, eval: ./missing-eval.jsonl}\n"
        "training:\n  lora: {r: 0, scope: [llm, eyes]}\n  learning_rate: {llm: -1e-4}\n"
        "search:\n  training.lora.rank: {choice: [1]}\n  training.lora.dropout: {uniform: [0.5, 0.1]}\n"
    )
    proc = raylora("validate", str(spec))
    assert_user_error(
        proc,
        "training.lora.r",
        "training.lora.scope[1]",
        "training.learning_rate.llm",
        "search.training.lora.rank",
        "low < high",
    )
    assert len(proc.stderr.strip().splitlines()) == 5
    fixed = spec.read_text().split("training:")[0]
    spec.write_text(fixed)
    assert_user_error(
        raylora("validate", str(spec)),
        "model.name_or_path: no such model folder",
        "data.train: no such data file",
    )


def test_empty_missing_and_broken_spec_files(tmp_path):
    empty = tmp_path / "empty.yaml"
    empty.write_text("")
    assert_user_error(raylora("validate", str(empty)), "empty")
    assert_user_error(raylora("validate", str(tmp_path / "missing.yaml")), "no such spec file")
    broken = tmp_path / "broken.yaml"
    broken.write_text("study:\n  name: x\n  num_trials: [1\n")
    proc = raylora("validate", str(broken))
    assert_user_error(proc, f"{broken}:", "YAML syntax error")


@pytest.mark.slow
def test_seed_5_2_target_modules_name_the_real_vision_modules(tmp_path, raylora_cli):
    spec = tmp_path / "seed.yaml"
    spec.write_text(
        "training:\n  lora:\n    enabled: true\n    r: 8\n    alpha: 16\n    dropout: 0.05\n"
        "    target_modules: [q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj,\n"
        "                     visual.attn.qkv, visual.attn.proj, visual.mlp.fc1, visual.mlp.fc2]\n"
        "  gradient_checkpointing: true\n  use_4bit: true\n"
        "  sft: {learning_rate: 1.0e-4, per_device_train_batch_size: 1, gradient_accumulation_steps: 32}\n"
    )
    code, _, err = raylora_cli("validate", str(spec))
    assert code == 2 and "Traceback" not in err, err
    assert "training.lora.target_modules" in err and "'visual.attn.qkv' matches no module" in err, err
    assert "model.visual.blocks.N.attn.qkv" in err, err


def test_help_and_validate_do_not_import_torch():
    code = (
        "import sys\n"
        "from raylora import cli\n"
        "try:\n"
        "    cli.app(['validate', 'search_spaces/quickstart.yaml'], standalone_mode=False)\n"
        "except SystemExit:\n"
        "    pass\n"
        "assert 'torch' not in sys.modules, 'validate imported torch'\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert proc.returncode == 0, proc.stderr


@pytest.mark.slow
def test_estimate_reports_every_searched_shape(raylora_cli):
    code, out, err = raylora_cli("estimate", str(ROOT / "search_spaces/quickstart.yaml"), "--json")
    assert code == 0, err
    rows = json.loads(out)
    assert "fixed values" in rows and "r=32" in rows and "scope=llm+vision+projector" in rows
    assert rows["r=32"]["lora_bytes"] == 4 * rows["r=8"]["lora_bytes"]
    assert all(row["total_bytes"] > row["weights_bytes"] > 0 for row in rows.values())


@pytest.mark.parametrize(
    "args, message",
    [
        (["serch"], "error: No such command 'serch'. Did you mean 'search'? (see 'raylora --help')"),
        (["search"], "error: Missing argument 'SPEC'. (see 'raylora search --help')"),
        (["search", "--bogus", "x.yaml"], "error: No such option: --bogus (see 'raylora search --help')"),
        (["inspect", "x", "--r", "zero"], "error: Invalid value for '--r'"),
        (["promote", "bestt"], "error: No such command 'bestt'. Did you mean 'best'?"),
    ],
)
def test_usage_errors_are_one_line_and_exit_2(args, message):
    proc = subprocess.run([*RAYLORA, *args], capture_output=True, text=True)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(message), proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize("args", [[], ["promote"]])
def test_a_command_without_arguments_prints_its_help(args):
    proc = subprocess.run([*RAYLORA, *args], capture_output=True, text=True)
    assert proc.returncode == 0 and "Usage: raylora" in proc.stdout, proc.stdout + proc.stderr


def test_shell_completion_is_offered():
    proc = subprocess.run([*RAYLORA, "--help"], capture_output=True, text=True)
    assert "--install-completion" in proc.stdout


def test_the_terminal_leaderboard_shows_every_objective(tmp_path, capsys, monkeypatch):
    """A study of several objectives prints a column per objective: the first's best value, the others'
    values where the first was best (a pruned trial's cost where it has no values)."""
    from raylora.cli import _print_leaderboard
    from raylora.record.states import TrialState
    from raylora.record.trials import StudyRecord, TrialRecord

    monkeypatch.setenv("COLUMNS", "200")
    record = StudyRecord(tmp_path, "two", "eval/loss", "min")
    record.goals = [("eval/loss", "min"), ("cost/peak_mem_gb", "min")]
    record.trials = {
        "t000": TrialRecord("t000", TrialState.COMPLETE, {}, 1.25, 40, values={"cost/peak_mem_gb": 3.5}),
        "t001": TrialRecord("t001", TrialState.PRUNED, {}, 2.5, 10, cost={"cost/peak_mem_gb": 1.75}),
    }
    _print_leaderboard(record)
    lines = capsys.readouterr().out.splitlines()
    header = next([c.strip() for c in line.split("┃")] for line in lines if line.startswith("┃"))
    cells = [[c.strip() for c in line.split("│")] for line in lines if line.startswith("│")]
    assert header[1:8] == ["#", "trial", "state", "eval/loss", "cost/peak_mem_gb", "steps", "params"]
    assert [c[3:6] for c in cells] == [["COMPLETE", "1.25", "3.5"], ["PRUNED", "2.5", "1.75"]]
