"""FSDP2-sharded trials (``resources.sharding: fsdp``) on CPU: two gloo workers, the tiny built-in model.

Each run spawns a real two-process group and runs the real training recipe in it; :class:`_GroupSession`
is the recipe's session for such a group (rank 0 writes the checkpoints and the final adapter).
"""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import pytest
import torch

from raylora import spec as spec_lib
from raylora.spec import Spec

ROOT = Path(__file__).resolve().parents[1]
QUICKSTART = ROOT / "search_spaces" / "quickstart.yaml"
STEPS = 4

pytestmark = pytest.mark.slow  # each module run spawns one two-process group and trains four trials


def _spec(*overrides: str) -> Spec:
    return spec_lib.load(
        QUICKSTART,
        [
            f"training.max_steps={STEPS}",
            "data.loader_workers=0",
            "training.eval_every=2",
            "training.click_eval_samples=0",
            "data.eval_samples=4",
            "resources.workers_per_trial=2",
            *overrides,
        ],
    )


class _GroupSession:
    """The recipe's session for one rank of a spawned process group; rank 0 writes what it is given."""

    def __init__(self, rank: int, world: int, out: Path, resume: Path | None):
        self.rank, self.world_size, self.local_rank, self.node = rank, world, rank, "local"
        self.out, self.resume, self.reports = out, resume, []

    def latest_checkpoint(self):
        return self.resume

    def stop_requested(self, distributed, device):
        return False

    def progress(self, step, max_steps, running):
        pass

    def phase(self, phase, done=None, total=None):
        pass

    def report(self, metrics, write_checkpoint=None):
        if self.rank != 0:
            return
        self.reports.append(metrics)
        if write_checkpoint is not None:
            folder = self.out / f"checkpoint_{metrics['step']:06d}"
            folder.mkdir(parents=True)
            write_checkpoint(folder)

    def finish(self, write_final):
        if self.rank == 0:
            write_final(self.out)


def _worker(rank: int, world: int, port: int, jobs: list[tuple[dict, str, str | None]]) -> None:
    """Run ``jobs`` (spec, output folder, checkpoint to resume from) one after another in one group."""
    import torch.distributed as dist

    from raylora.train import recipe

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)  # two workers on a small CI machine: no oversubscription
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        for spec_data, out, resume in jobs:
            spec = Spec.from_dict(spec_data)
            session = _GroupSession(rank, world, Path(out), Path(resume) if resume else None)
            outcome = recipe.train(spec, session)
            outcome.model.eval()
            with torch.no_grad():  # under FSDP a collective: every rank runs it
                logits = outcome.model(**_eval_batch(spec)).logits
            if rank == 0:
                torch.save(logits, Path(out) / "logits.pt")
                (Path(out) / "reports.json").write_text(json.dumps(session.reports, default=str))
    finally:
        dist.destroy_process_group()


def _eval_batch(spec: Spec) -> dict:
    from raylora import builtin
    from raylora.train import encode, loader, model

    processor = model.load_processor(spec, builtin.resolve_model(spec.model.name_or_path))
    image_kw = encode.image_kwargs(spec.data.image.min_pixels, spec.data.image.max_pixels, processor)
    split = loader.open_split(
        builtin.resolve_data(spec.data.eval, "eval"), processor, spec.data.max_length, image_kw, limit=2
    )
    batch = encode.collate(list(split.items), 0)
    batch.pop("labels")
    return batch


def _run(jobs: list[tuple[Spec, Path, Path | None]]) -> None:
    """Train each job's spec in turn in one fresh two-process gloo group."""
    import torch.multiprocessing as mp

    from raylora import builtin

    builtin.resolve_model(builtin.TINY_MODEL)  # built once, outside any process group
    for _, out, _ in jobs:
        out.mkdir(parents=True, exist_ok=True)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    plain = [(spec.to_dict(), str(out), str(resume) if resume else None) for spec, out, resume in jobs]
    mp.spawn(_worker, args=(2, port, plain), nprocs=2, join=True)


def _reports(out: Path) -> list[dict]:
    return json.loads((out / "reports.json").read_text())


def _tiny_moe(out: Path) -> Path:
    """A tiny Qwen3-VL-MoE checkpoint (the builtin tiny model's shapes and processor, 4 experts)."""
    from transformers import (
        AutoProcessor,
        GenerationConfig,
        Qwen3VLMoeConfig,
        Qwen3VLMoeForConditionalGeneration,
    )

    from raylora import builtin
    from raylora.builtin.tiny_model import tiny_model_config

    source = builtin.resolve_model(builtin.TINY_MODEL)
    processor = AutoProcessor.from_pretrained(source)
    data = tiny_model_config(processor.tokenizer).to_dict()
    data["text_config"].update(
        model_type="qwen3_vl_moe_text",
        moe_intermediate_size=64,
        num_experts=4,
        num_experts_per_tok=2,
        decoder_sparse_step=1,
        mlp_only_layers=[],
    )
    data["vision_config"]["model_type"] = "qwen3_vl_moe"
    data["model_type"] = "qwen3_vl_moe"
    config = Qwen3VLMoeConfig.from_dict(data)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = Qwen3VLMoeForConditionalGeneration(config).to(torch.float32)
    model.generation_config = GenerationConfig.from_pretrained(source)
    model.save_pretrained(out)
    processor.save_pretrained(out)
    return out


RUNS = ("ddp", "fsdp", "resumed", "moe", "ddp_nf4", "fsdp_nf4")


@pytest.fixture(scope="session")
def runs(built_once) -> dict[str, Path]:
    """One process group, six trials, run once for the session: the same trial (seed, data,
    configuration) under DDP and under FSDP, the FSDP trial restarted from its step-2 checkpoint, a tiny
    MoE model under FSDP, and a short 4-bit trial under DDP and under FSDP."""

    def trials(root: Path) -> None:
        scope = "training.lora.scope=[llm, vision]"
        ddp, fsdp = _spec("resources.sharding=none", scope), _spec("resources.sharding=fsdp", scope)
        moe = _spec("resources.sharding=fsdp", scope, f"model.name_or_path={_tiny_moe(root / 'tiny-moe')}")
        nf4 = ("training.quantization=nf4", "training.max_steps=2")
        ddp_nf4, fsdp_nf4 = _spec("resources.sharding=none", *nf4), _spec("resources.sharding=fsdp", *nf4)
        outs = {name: root / name for name in RUNS}
        _run(
            [
                (ddp, outs["ddp"], None),
                (fsdp, outs["fsdp"], None),
                (fsdp, outs["resumed"], outs["fsdp"] / "checkpoint_000002"),
                (moe, outs["moe"], None),
                (ddp_nf4, outs["ddp_nf4"], None),
                (fsdp_nf4, outs["fsdp_nf4"], None),
            ]
        )

    root = built_once("sharding", trials)
    return {name: root / name for name in RUNS}


def test_fsdp_matches_ddp_step_for_step(runs):
    ddp, fsdp = _reports(runs["ddp"]), _reports(runs["fsdp"])
    assert [r["step"] for r in fsdp] == [r["step"] for r in ddp] == [2, 4]
    for a, b in zip(ddp, fsdp, strict=True):
        for key in ("train/loss", "eval/loss"):
            assert b[key] == pytest.approx(a[key], rel=1e-3), (key, a["step"])


def test_fsdp_adapter_loads_in_vanilla_peft_with_the_same_logits(runs):
    from peft import PeftModel
    from transformers import AutoModelForImageTextToText

    def vanilla(adapter: Path):
        config = json.loads((adapter / "adapter_config.json").read_text())
        base = AutoModelForImageTextToText.from_pretrained(config["base_model_name_or_path"])
        return PeftModel.from_pretrained(base, adapter).eval()

    loaded = vanilla(runs["fsdp"] / "adapter")
    lora_b = {n: p for n, p in loaded.named_parameters() if "lora_B" in n}
    assert any(".visual.blocks." in n for n in lora_b) and all(p.abs().sum() > 0 for p in lora_b.values())
    batch = _eval_batch(_spec())
    with torch.no_grad():
        logits = loaded(**batch).logits
        torch.testing.assert_close(logits, torch.load(runs["fsdp"] / "logits.pt"), rtol=1e-5, atol=1e-5)
        # DDP's adapter from the same trial agrees: both strategies trained the same weights.
        torch.testing.assert_close(
            vanilla(runs["ddp"] / "adapter")(**batch).logits, logits, rtol=1e-3, atol=1e-3
        )


def test_fsdp_resumes_from_its_checkpoint(runs):
    """A restarted trial picks up the step-2 checkpoint (adapter and sharded optimizer state) and ends
    where the uninterrupted run ended."""
    resumed, whole = _reports(runs["resumed"]), _reports(runs["fsdp"])
    assert [r["step"] for r in resumed] == [STEPS] and resumed[0]["resumed_from_step"] == 2
    for key in ("train/loss", "eval/loss"):
        assert resumed[0][key] == pytest.approx(whole[-1][key], rel=1e-3), key


def test_a_tiny_moe_model_trains_under_fsdp(runs):
    reports = _reports(runs["moe"])
    assert [r["step"] for r in reports] == [2, 4]
    targets = json.loads((runs["moe"] / "targets.json").read_text())
    assert targets["model_type"] == "qwen3_vl_moe" and set(targets["modules"]) == {"llm", "vision"}
    assert (runs["moe"] / "adapter" / "adapter_model.safetensors").is_file()


def test_4bit_fsdp_matches_4bit_ddp(runs):
    """nf4 with the packed weights stored in the model dtype: FSDP2 shards them like any tensor."""
    ddp, fsdp = _reports(runs["ddp_nf4"]), _reports(runs["fsdp_nf4"])
    assert [r["step"] for r in fsdp] == [r["step"] for r in ddp] == [2]
    for key in ("train/loss", "eval/loss"):
        assert fsdp[0][key] == pytest.approx(ddp[0][key], rel=1e-3), key
    assert (runs["fsdp_nf4"] / "adapter" / "adapter_model.safetensors").is_file()


def test_raylora_search_trains_fsdp_trials_in_the_trial_pool(runs, tmp_path):
    """The same FSDP trial through `raylora search` (Ray Train worker group of 2, gloo) reports what the
    recipe reported in a plain process group, and leaves an adapter vanilla PEFT loads."""
    import subprocess
    import sys

    import yaml
    from mlflow import MlflowClient

    spec = _spec("resources.sharding=fsdp", "training.lora.scope=[llm, vision]").to_dict()
    spec["study"] = {
        "name": "fsdp",
        "num_trials": 1,
        "max_concurrent_trials": 1,
        "scheduler": {"type": "fifo"},
    }
    spec["resources"]["cpus_per_worker"] = 0.5
    spec["search"] = {"training.lora.r": {"choice": [16]}}
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    tracking = f"sqlite:///{tmp_path}/mlflow.db"
    command = ["search", str(path), "--storage", str(tmp_path / "store"), "--tracking-uri", tracking]
    proc = subprocess.run(
        [sys.executable, "-m", "raylora", *command], capture_output=True, text=True, cwd=ROOT, timeout=900
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    (trial,) = json.loads((tmp_path / "store" / "fsdp" / "summary.json").read_text())["trials"]
    assert trial["state"] == "COMPLETE" and trial["steps"] == STEPS
    client = MlflowClient(tracking_uri=tracking)
    expected = {r["step"]: r for r in _reports(runs["fsdp"])}
    for key in ("train/loss", "eval/loss"):
        history = {m.step: m.value for m in client.get_metric_history(trial["mlflow_run_id"], key)}
        assert history[2] == pytest.approx(expected[2][key], rel=1e-3), key
    assert (Path(trial["adapter_path"]) / "adapter_model.safetensors").is_file()
