"""One trial end to end on the embedded defaults: real tiny Qwen3-VL, real PEFT, real bitsandbytes."""

from __future__ import annotations

import functools
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from raylora import spec as spec_lib
from raylora.train import LocalSession, train

ROOT = Path(__file__).resolve().parents[1]
QUICKSTART = ROOT / "search_spaces" / "quickstart.yaml"


def _spec(*overrides: str):
    return spec_lib.load(QUICKSTART, ["training.max_steps=6", "training.eval_every=3", *overrides])


def _load_adapter(adapter_dir: Path):
    from peft import PeftModel
    from transformers import AutoModelForImageTextToText

    config = json.loads((adapter_dir / "adapter_config.json").read_text())
    base = AutoModelForImageTextToText.from_pretrained(config["base_model_name_or_path"])
    return PeftModel.from_pretrained(base, adapter_dir).eval()


def _first_eval_batch(spec):
    from raylora import builtin
    from raylora.train import encode, loader, model

    processor = model.load_processor(spec, builtin.resolve_model(spec.model.name_or_path))
    image_kw = encode.image_kwargs(spec.data.image.min_pixels, spec.data.image.max_pixels, processor)
    split = loader.open_split(
        builtin.resolve_data(spec.data.eval, "eval"), processor, spec.data.max_length, image_kw, limit=2
    )
    return encode.collate(list(split.items), processor.tokenizer.pad_token_id)


@pytest.mark.slow  # trains, evaluates and reloads for over a minute on a busy 2-CPU machine
def test_llm_and_vision_adapter_reloads_with_vanilla_peft(tmp_path, small_eval_file):
    spec = _spec(
        "training.lora.scope=[llm, vision]",
        "training.gradient_checkpointing=true",
        f"data.eval={small_eval_file}",
    )
    outcome = train(spec, LocalSession(tmp_path, log=lambda line: None))
    # Trained with transformers' own layers: on a GPU the default swaps in Hub kernels; offline nodes failed.
    assert not outcome.model.get_base_model().use_kernels

    adapter = tmp_path / "adapter"
    assert (adapter / "adapter_model.safetensors").is_file()
    assert not list(adapter.glob("*.bin")), "adapters are saved as safetensors only"
    loaded = _load_adapter(adapter)

    lora_b = {n: p for n, p in loaded.named_parameters() if "lora_B" in n}
    vision_b = [n for n in lora_b if ".visual.blocks." in n]
    llm_b = [n for n in lora_b if ".language_model.layers." in n]
    assert len(vision_b) == 2 * 4 and len(llm_b) == 2 * 7  # 2 blocks × 4 modules, 2 layers × 7 modules
    assert all(lora_b[n].abs().sum() > 0 for n in vision_b + llm_b), "some LoRA B stayed zero"
    assert not [n for n in lora_b if "merger" in n], "projector and deepstack were not in scope"

    batch = _first_eval_batch(spec)
    batch.pop("labels")
    trained = outcome.model.eval()
    with torch.no_grad():
        expected = trained(**batch).logits
        actual = loaded(**batch).logits
    torch.testing.assert_close(actual, expected, rtol=1e-5, atol=1e-5)

    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["step"] == 6 and [h["step"] for h in metrics["history"]] == [3, 6]
    for key in ("train/loss", "eval/loss", "eval/click_acc"):
        assert isinstance(metrics[key], float), key
    targets = json.loads((tmp_path / "targets.json").read_text())
    assert set(targets["modules"]) == {"llm", "vision"}
    assert targets["trainable_params"]["vision"] > 0 and targets["trainable_params"]["projector"] == 0
    assert targets["trainable_total"] == sum(p.numel() for p in outcome.model.parameters() if p.requires_grad)


@pytest.mark.slow  # the 4-bit forward on CPU: the longest of the in-process trainings
def test_nf4_trains_lora_on_a_4bit_base(tmp_path):
    import bitsandbytes as bnb

    spec = _spec(
        "training.quantization=nf4",
        "training.lora.scope=[llm, vision]",
        "training.max_steps=3",
        "training.eval_every=3",
        "training.click_eval_samples=0",  # the eval loss runs the 4-bit forward; generating adds nothing
    )
    outcome = train(spec, LocalSession(tmp_path, log=lambda line: None))
    base = outcome.model.get_base_model()
    quantized = {n for n, m in base.named_modules() if isinstance(m, bnb.nn.Linear4bit)}
    assert any(".visual.blocks." in n for n in quantized) and any(".language_model." in n for n in quantized)
    assert not any(n.startswith("lm_head") for n in quantized)
    assert outcome.metrics["eval/loss"] > 0


def test_nf4_llm_only_keeps_vision_and_mergers_full_precision(tmp_path):
    import bitsandbytes as bnb

    spec = _spec(
        "training.quantization=nf4-llm-only",
        "training.lora.scope=[llm, projector, deepstack]",
        "training.max_steps=3",
        "training.eval_every=3",
        "data.eval=null",
        "study.objective.metric=train/loss",
    )
    outcome = train(spec, LocalSession(tmp_path, log=lambda line: None))
    quantized = {
        n for n, m in outcome.model.get_base_model().named_modules() if isinstance(m, bnb.nn.Linear4bit)
    }
    assert quantized and all(".language_model." in n for n in quantized), sorted(quantized)[:5]
    parts = json.loads((tmp_path / "targets.json").read_text())["trainable_params"]
    assert parts["projector"] > 0 and parts["deepstack"] > 0 and parts["vision"] == 0


@pytest.mark.slow
def test_cli_train_is_warning_clean(tmp_path):
    out = tmp_path / "out"
    env = {**os.environ, "PYTHONWARNINGS": "default"}
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "raylora",
            "train",
            str(QUICKSTART),
            "--set",
            "training.lora.scope=[llm, vision]",
            "--set",
            "training.gradient_checkpointing=true",
            "--set",
            "training.max_steps=4",
            "--set",
            "training.eval_every=2",
            "--output",
            str(out),
        ],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    text = proc.stdout + proc.stderr
    for needle in (
        "incompatible with gradient checkpointing",
        "`tokenizer` is deprecated",
        "PAD/BOS/EOS",
        "gradient_checkpointing_enable` is deprecated",
        "Warning:",
        "warnings.warn",
        "%|",
    ):
        assert needle not in text, f"{needle!r} printed:\n{text}"
    assert (out / "adapter" / "adapter_config.json").is_file()
    assert "step 4" in proc.stdout


@pytest.mark.parametrize(
    "row, expected",
    [
        ("{not json", "train.jsonl:2: malformed JSON"),
        (
            '{"messages": [{"role": "user", "content": [{"type": "image", "image": "nope.png"}]}, '
            '{"role": "assistant", "content": "click(1, 2)"}]}',
            "train.jsonl:2: messages[0].content[0]: image not found",
        ),
        ('{"messages": [{"role": "user", "content": "hi"}]}', "train.jsonl:2: no assistant turn"),
    ],
)
def test_bad_dataset_lines_exit_2_naming_file_and_line(tmp_path, row, expected):
    from raylora import builtin

    good = Path(builtin.resolve_data(builtin.GUI_DATA, "train")).read_text().splitlines()[0]
    train_file = tmp_path / "train.jsonl"
    train_file.write_text(
        good.replace('"shots/', f'"{Path(builtin.resolve_data(builtin.GUI_DATA, "train")).parent}/shots/')
        + "\n"
        + row
        + "\n"
    )
    proc = subprocess.run(
        [sys.executable, "-m", "raylora", "validate", str(QUICKSTART), "--set", f"data.train={train_file}"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
    )
    assert proc.returncode == 2, proc.stderr
    assert expected in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


def test_a_scope_that_gets_no_gradient_fails_the_trial(tmp_path):
    """Vision LoRA on text-only data would silently train nothing: the first step says so."""
    from raylora.errors import TrialError

    text_only = tmp_path / "text.jsonl"
    row = {
        "messages": [
            {"role": "user", "content": "click the OK button"},
            {"role": "assistant", "content": "click(10, 20)"},
        ]
    }
    text_only.write_text((json.dumps(row) + "\n") * 4)
    spec = _spec(
        "training.lora.scope=[llm, vision]",
        f"data.train={text_only}",
        "data.eval=null",
        "study.objective.metric=train/loss",
    )
    with pytest.raises(TrialError, match="LoRA on vision received no gradient"):
        train(spec, LocalSession(tmp_path / "out", log=lambda line: None))


class _CheckpointingSession(LocalSession):
    """A standalone session that also keeps each reported checkpoint, and resumes from a given one,
    as the trial pool's session does on local storage."""

    def __init__(self, output_dir: Path, resume: Path | None = None):
        super().__init__(output_dir, log=lambda line: None)
        self.resume = resume

    def latest_checkpoint(self) -> Path | None:
        return self.resume

    def report(self, metrics: dict, write_checkpoint=None) -> None:
        super().report(metrics)
        if write_checkpoint is not None:
            folder = self.output_dir / f"checkpoint_s{metrics['step']:07d}"
            folder.mkdir(parents=True)
            write_checkpoint(folder)


def test_resuming_keeps_the_checkpoint_it_resumed_from(tmp_path):
    # No evaluation: checkpoints are written at every report all the same.
    no_eval = ["data.eval=null", "study.objective.metric=train/loss"]
    spec = _spec("training.max_steps=2", "training.eval_every=2", *no_eval)
    train(spec, _CheckpointingSession(tmp_path / "first"))
    checkpoint = tmp_path / "first" / "checkpoint_s0000002"
    assert (checkpoint / "adapter" / "adapter_model.safetensors").is_file()

    longer = _spec("training.max_steps=4", "training.eval_every=2", *no_eval)
    outcome = train(longer, _CheckpointingSession(tmp_path / "second", resume=checkpoint))
    assert outcome.metrics["step"] == 4 and outcome.metrics["resumed_from_step"] == 2
    # On local storage that folder is the trial's real checkpoint: it may hold the trial's best adapter.
    assert (checkpoint / "adapter" / "adapter_model.safetensors").is_file()
    _load_adapter(checkpoint / "adapter")


@pytest.mark.slow  # a 2-layer model through four cases and two Trainer runs, in a subprocess: ~20 s
def test_the_gpu_check_runs_every_case_on_a_tiny_model():
    """``benchmarks/gpu_check.py --tiny``: the script a GPU lease runs, on the CPU at a size that trains in
    seconds, so a transformers or Ray upgrade that breaks it shows here rather than on a lent GPU's clock.
    Every case reports its tokens/s and memory estimate, and the two bf16 cases their Trainer twin."""
    script = ROOT / "benchmarks" / "gpu_check.py"
    args = ["--tiny", "--steps", "3", "--batch", "1"]
    out = subprocess.run([sys.executable, str(script), *args], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    cases = json.loads(out.stdout.strip().splitlines()[-1])["results"]
    labels = {"bf16 [llm]", "bf16 [llm, vision]", "nf4 [llm]", "bf16 [llm, vision] max_pixels"}
    assert set(cases) == labels, cases
    for label, row in cases.items():
        assert "error" not in row, (label, row, out.stderr[-3000:])
        assert row["tokens_per_s"] > 0 and row["estimate_gib"] > 0, (label, row)
    assert {label for label, row in cases.items() if row.get("trainer_tokens_per_s", 0) > 0} == {
        "bf16 [llm]",
        "bf16 [llm, vision]",
    }


@functools.cache
def _gpu_check():
    import importlib.util

    spec = importlib.util.spec_from_file_location("gpu_check", ROOT / "benchmarks" / "gpu_check.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@given(steps=st.integers(min_value=1, max_value=400))
def test_the_gpu_checks_trainer_is_timed_over_raylora_s_last_report_window(steps):
    """The Trainer's timed steps are exactly those of raylora's last report window, for any step count: the
    recipe reports at every multiple of ``eval_every`` and at the last step (written out here)."""
    gpu_check = _gpu_check()
    every = gpu_check.report_every(steps)
    reports = [s for s in range(1, steps + 1) if s % every == 0 or s == steps]
    assert gpu_check.last_window_start(steps) == (reports[-2] if len(reports) > 1 else 0)
    assert steps - gpu_check.last_window_start(steps) <= max(steps // 3, 1)  # the steady third, not more
