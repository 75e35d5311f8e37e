"""Loop throughput: raylora's per-worker training loop against a bare PyTorch loop on the same model.

What is measured
----------------
Training samples per second over S optimizer steps of the builtin tiny Qwen3-VL with LoRA on the LLM
(``training.lora.scope: [llm]``), per-device batch N, on this machine's CPU (or its GPU if torch sees one):

* **raylora**: ``raylora.train.train(spec, LocalSession(tmp))`` with evaluation off
  (``data.eval: null``) and ``eval_every = max_steps = S``, so it reports once, at the end. The number is the
  ``samples_per_s`` it reports: its own window, opened just before the first step and closed at the report
  after step S. Model build, data encoding and the final adapter save fall outside that window.
* **bare**: the model from the same ``raylora.train.model.build`` (so the modules, dtype, LoRA targets,
  dropout and activation checkpointing are identical), AdamW over the same
  ``raylora.train.model.param_groups``, then a plain loop -- forward, ``loss.backward()``,
  ``optimizer.step()``, ``optimizer.zero_grad()`` -- over the very batches raylora draws
  (``raylora.train.loader.batches`` with the same seed, encoded by the same loader and
  collated with ``raylora.train.encode.collate`` before the clock starts). Timed from the first step to the
  end of step S, like raylora's window.

Why it is fair
--------------
Both sides run in this one process (same threads, same allocator, same imports), on the same samples in the
same order, for the same number of steps, and build their model outside the timing. Whatever raylora does
per step beyond the bare loop is what the ratio measures: collating and moving each batch, reading the loss
and token count, its default gradient clipping and LR schedule, and the first-step gradient check. The sides
alternate raylora, bare, raylora, bare, ... for ``--rounds`` rounds after one warm-up round that is run and
discarded; the table reports the median of each side. On a shared or noisy machine only the ratio from one
run means anything; absolute numbers do not carry across runs.

Usage (from the repo root)::

    .venv/bin/python benchmarks/loop_throughput.py                       # S=30, 3 rounds, batch 2
    .venv/bin/python benchmarks/loop_throughput.py --steps 5 --rounds 1  # smoke test
    .venv/bin/python benchmarks/loop_throughput.py --threads 1           # on a busy shared machine

On a machine whose cores other work also uses, torch's multi-threaded CPU kernels stall whenever one of
their threads is descheduled, and single runs swing several-fold; ``--threads 1`` keeps such a run steady.

``RAYLORA_HOME`` is used if set; otherwise a temporary one is built first (untimed) and removed at the end.
The last line printed is JSON: ``{"benchmark": "loop_throughput", "raylora_samples_per_s",
"bare_samples_per_s", "ratio": raylora / bare, "target": 0.95, ...}``.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

TARGET = 0.95


def make_spec(steps: int, batch: int):
    from raylora import spec as spec_lib

    return spec_lib.build(
        {
            "study": {"objective": {"metric": "train/loss"}},
            "data": {"eval": None},
            "training": {
                "max_steps": steps,
                "eval_every": steps,
                "per_device_train_batch_size": batch,
                "lora": {"scope": ["llm"]},
            },
        }
    )


def run_raylora(spec) -> float:
    """Samples/s as raylora's own loop reports it."""
    from raylora.train import LocalSession, train

    with tempfile.TemporaryDirectory(prefix="raylora-bench-") as tmp:
        outcome = train(spec, LocalSession(tmp, log=lambda line: None))
    if outcome.metrics.get("step") != spec.training.max_steps:
        raise RuntimeError(f"raylora stopped early: {outcome.metrics}")
    return float(outcome.metrics["samples_per_s"])


def prepare_batches(spec) -> list[dict]:
    """The batches raylora's loop draws, in its order, collated ahead of time."""
    from raylora import builtin
    from raylora.train import encode, loader
    from raylora.train import model as model_lib

    path = builtin.resolve_model(spec.model.name_or_path)
    processor = model_lib.load_processor(spec, path)
    image_kw = encode.image_kwargs(spec.data.image.min_pixels, spec.data.image.max_pixels, processor)
    split = loader.open_split(
        builtin.resolve_data(spec.data.train, "train"), processor, spec.data.max_length, image_kw
    )
    pad_id = processor.tokenizer.pad_token_id
    draw = loader.batches(split, spec.training.per_device_train_batch_size, pad_id, spec.training.seed)
    return [next(draw) for _ in range(spec.training.max_steps)]


def run_bare(spec, batches: list[dict]) -> float:
    """Samples/s of a plain forward/backward/step/zero_grad loop on raylora's model."""
    import torch

    from raylora import builtin
    from raylora.train import model as model_lib

    device = torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
    torch.manual_seed(spec.training.seed)
    built = model_lib.build(spec, builtin.resolve_model(spec.model.name_or_path), device)
    model = built.model
    optimizer = torch.optim.AdamW(
        model_lib.param_groups(model, built.model_type, spec), betas=(0.9, 0.999), eps=1e-8
    )
    on_device = [{k: v.to(device) for k, v in batch.items()} for batch in batches]
    model.train()
    _sync(device)
    start = time.perf_counter()
    for batch in on_device:
        loss = model(**batch, use_cache=False).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    _sync(device)
    elapsed = time.perf_counter() - start
    return sum(len(b["input_ids"]) for b in batches) / elapsed


def _sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=30, help="optimizer steps per run (default 30)")
    parser.add_argument("--rounds", type=int, default=3, help="timed rounds per side (default 3)")
    parser.add_argument("--batch", type=int, default=2, help="per-device batch size (default 2)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    args = parser.parse_args(argv)
    if min(args.steps, args.rounds, args.batch, args.threads or 1) < 1:
        parser.error("--steps, --rounds, --batch and --threads must be >= 1")

    own_home = None
    if not os.environ.get("RAYLORA_HOME"):
        own_home = tempfile.mkdtemp(prefix="raylora-bench-home-")
        os.environ["RAYLORA_HOME"] = own_home
    try:
        return _bench(args)
    finally:
        if own_home:
            shutil.rmtree(own_home, ignore_errors=True)


def _bench(args) -> int:
    import torch

    from raylora import builtin

    if args.threads:
        torch.set_num_threads(args.threads)
    builtin.ensure_tiny_model()
    builtin.ensure_gui_dataset()
    spec = make_spec(args.steps, args.batch)
    batches = prepare_batches(spec)
    device = "cuda" if torch.cuda.is_available() else f"cpu, {torch.get_num_threads()} threads"
    print(f"loop throughput: tiny Qwen3-VL, LoRA [llm], batch {args.batch}, {args.steps} steps, {device}")

    rows: list[tuple[str, float, float]] = []
    for round_ in range(args.rounds + 1):
        values = []
        for side in (run_raylora, run_bare):
            gc.collect()
            values.append(side(spec) if side is run_raylora else side(spec, batches))
        label = "warm-up" if round_ == 0 else f"round {round_}"
        rows.append((label, *values))
        print(f"  {label:<8} raylora {values[0]:8.2f}  bare {values[1]:8.2f}  samples/s", flush=True)

    timed = rows[1:]
    raylora = statistics.median(r[1] for r in timed)
    bare = statistics.median(r[2] for r in timed)
    ratio = raylora / bare
    print()
    print(f"  {'side':<8} {'median samples/s':>17}")
    print(f"  {'raylora':<8} {raylora:>17.2f}")
    print(f"  {'bare':<8} {bare:>17.2f}")
    print(f"  {'ratio':<8} {ratio:>17.3f}   (raylora / bare; target >= {TARGET})")
    result = {
        "benchmark": "loop_throughput",
        "raylora_samples_per_s": round(raylora, 3),
        "bare_samples_per_s": round(bare, 3),
        "ratio": round(ratio, 4),
        "target": TARGET,
        "steps": args.steps,
        "rounds": args.rounds,
        "batch": args.batch,
        "device": device,
        "rounds_raylora": [round(r[1], 3) for r in timed],
        "rounds_bare": [round(r[2], 3) for r in timed],
    }
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
