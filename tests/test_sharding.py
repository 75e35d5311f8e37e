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


def _spec(*overrides: str) -> Spec:
    return spec_lib.load(
        QUICKSTART,
        [
            f"training.max_steps={STEPS}",
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


def _worker(rank: int, world: int, port: int, spec_data: dict, out: str, resume: str | None) -> None:
    import torch.distributed as dist

    from raylora.train import recipe

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)  # two workers on a small CI machine: no oversubscription
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        session = _GroupSession(rank, world, Path(out), Path(resume) if resume else None)
        outcome = recipe.train(Spec.from_dict(spec_data), session)
        batch = _eval_batch(Spec.from_dict(spec_data))
        outcome.model.eval()
        with torch.no_grad():  # under FSDP a collective: every rank runs it
            logits = outcome.model(**batch).logits
        if rank == 0:
            torch.save(logits, Path(out) / "logits.pt")
            (Path(out) / "reports.json").write_text(json.dumps(session.reports, default=str))
    finally:
        dist.destroy_process_group()


def _eval_batch(spec: Spec) -> dict:
    from raylora import builtin
    from raylora.train import data, model

    processor = model.load_processor(spec, builtin.resolve_model(spec.model.name_or_path))
    image_kw = data.image_kwargs(spec.data.image.min_pixels, spec.data.image.max_pixels, processor)
    records = data.read(builtin.resolve_data(spec.data.eval, "eval"), limit=2)
    batch = data.collate(data.encode(records, processor, spec.data.max_length, image_kw).items, 0)
    batch.pop("labels")
    return batch


def _run(spec: Spec, out: Path, resume: Path | None = None) -> list[dict]:
    """Train ``spec`` in a fresh two-process gloo group; rank 0's reports."""
    import torch.multiprocessing as mp

    from raylora import builtin

    builtin.resolve_model(spec.model.name_or_path)  # built once, outside any process group
    out.mkdir(parents=True, exist_ok=True)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    args = (2, port, spec.to_dict(), str(out), str(resume) if resume else None)
    mp.spawn(_worker, args=args, nprocs=2, join=True)
    return json.loads((out / "reports.json").read_text())


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, tuple[Path, list[dict]]]:
    """The same trial (seed, data, configuration) under DDP and under FSDP."""
    found = {}
    for sharding in ("none", "fsdp"):
        out = tmp_path_factory.mktemp(sharding)
        spec = _spec(f"resources.sharding={sharding}", "training.lora.scope=[llm, vision]")
        found[sharding] = (out, _run(spec, out))
    return found


def test_fsdp_matches_ddp_step_for_step(runs):
    ddp, fsdp = runs["none"][1], runs["fsdp"][1]
    assert [r["step"] for r in fsdp] == [r["step"] for r in ddp] == [2, 4]
    for a, b in zip(ddp, fsdp, strict=True):
        for key in ("train/loss", "eval/loss"):
            assert b[key] == pytest.approx(a[key], rel=1e-3), (key, a["step"])


def test_fsdp_adapter_loads_in_vanilla_peft_with_the_same_logits(runs):
    from peft import PeftModel
    from transformers import AutoModelForImageTextToText

    out = runs["fsdp"][0]
    adapter = out / "adapter"
    config = json.loads((adapter / "adapter_config.json").read_text())
    base = AutoModelForImageTextToText.from_pretrained(config["base_model_name_or_path"])
    loaded = PeftModel.from_pretrained(base, adapter).eval()
    lora_b = {n: p for n, p in loaded.named_parameters() if "lora_B" in n}
    assert any(".visual.blocks." in n for n in lora_b) and all(p.abs().sum() > 0 for p in lora_b.values())
    with torch.no_grad():
        logits = loaded(**_eval_batch(_spec())).logits
    torch.testing.assert_close(logits, torch.load(out / "logits.pt"), rtol=1e-5, atol=1e-5)
    # The DDP run's adapter from the same trial agrees too: the two strategies train the same weights.
    ddp = PeftModel.from_pretrained(
        AutoModelForImageTextToText.from_pretrained(config["base_model_name_or_path"]),
        runs["none"][0] / "adapter",
    ).eval()
    with torch.no_grad():
        torch.testing.assert_close(ddp(**_eval_batch(_spec())).logits, logits, rtol=1e-3, atol=1e-3)


def test_fsdp_resumes_from_its_checkpoint(runs, tmp_path):
    """A restarted trial picks up the step-2 checkpoint (adapter and sharded optimizer state) and ends
    where the uninterrupted run ended."""
    out, reports = runs["fsdp"]
    spec = _spec("resources.sharding=fsdp", "training.lora.scope=[llm, vision]")
    resumed = _run(spec, tmp_path, resume=out / "checkpoint_000002")
    assert [r["step"] for r in resumed] == [STEPS] and resumed[0]["resumed_from_step"] == 2
    assert resumed[0]["train/loss"] == pytest.approx(reports[-1]["train/loss"], rel=1e-3)
    assert resumed[0]["eval/loss"] == pytest.approx(reports[-1]["eval/loss"], rel=1e-3)
