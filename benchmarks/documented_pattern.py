"""The baseline for ``trial_overhead.py``: Ray's documented Tune + Train V2 pattern, written by hand.

This is what a user following the Ray docs ("Hyperparameter optimization" for Ray Train V2, i.e.
``doc/source/train/doc_code/train_tune_interop.py``) writes to tune a LoRA learning rate on the same tiny
Qwen3-VL model raylora trains, with no raylora code in the loop:

* :func:`train_fn_per_worker` -- a plain PyTorch + transformers + PEFT loop: ``from_pretrained``, LoRA on
  the LLM projections, ``ray.train.torch.prepare_model`` (DDP) and ``prepare_data_loader``, AdamW, and every
  ``eval_every`` steps an eval loss and ``ray.train.report`` (metrics only, as in the docs' quickstart; the
  adapter is checkpointed once, with the last report).
* :func:`driver` -- the Tune function trainable that builds a ``TorchTrainer`` (named after the trial id,
  with ``TuneReportCallback``) and fits it.
* :func:`run` -- ``Tuner(driver, ...).fit()`` between ``ray.init`` and ``ray.shutdown``.

The only thing borrowed from raylora is where the embedded model and data live
(``raylora.builtin.ensure_tiny_model`` / ``ensure_gui_dataset``), so both sides read the same bytes.

Run as a script it prints one JSON line, ``{"seconds": ..., "trials": [...]}``; ``trial_overhead.py`` runs it
in a fresh subprocess so imports cost what they cost a user running a script::

    RAYLORA_HOME=/tmp/home .venv/bin/python benchmarks/documented_pattern.py --k 1 --s 4 --e 2 \\
        --storage /tmp/st
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import ray
import ray.train
import ray.train.torch
import ray.tune
from ray.tune.integration.ray_train import TuneReportCallback

# On Qwen3-VL these names exist only in the language model (the vision tower uses qkv/proj/linear_fc*).
TARGET_MODULES = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
LORA_R = 16
LORA_ALPHA = 32
LORA_DROPOUT = 0.05
BATCH_SIZE = 2
EVAL_RECORDS = 4
"""Default eval records per evaluation; ``trial_overhead.py`` passes its count to both sides."""
NUM_WORKERS = 2
CPUS_PER_WORKER = 0.5


# -- data --------------------------------------------------------------------------------------------


def read_records(path: Path, limit: int | None = None) -> list[dict]:
    """JSONL chat records with their image paths made absolute (they are relative to the file)."""
    records = []
    with open(path) as f:
        for line in f:
            if not line.strip():
                continue
            record = json.loads(line)
            for message in record["messages"]:
                for item in message["content"]:
                    if item.get("type") == "image":
                        item["image"] = str(path.parent / item["image"])
            records.append(record)
            if limit is not None and len(records) >= limit:
                break
    return records


def make_collate(processor):
    """Records → one padded batch: chat template, processor(text, images), labels = ids with pad masked."""
    from PIL import Image

    def collate(records: list[dict]) -> dict:
        texts = [processor.apply_chat_template(r["messages"], tokenize=False) for r in records]
        images = [
            Image.open(item["image"]).convert("RGB")
            for r in records
            for m in r["messages"]
            for item in m["content"]
            if item.get("type") == "image"
        ]
        batch = processor(text=texts, images=images or None, padding=True, return_tensors="pt")
        labels = batch["input_ids"].clone()
        labels[batch["attention_mask"] == 0] = -100
        batch["labels"] = labels
        return dict(batch)

    return collate


# -- [1] the Ray Train worker ------------------------------------------------------------------------


def train_fn_per_worker(config: dict) -> None:
    """One DDP worker: S steps of plain LoRA fine-tuning, an eval loss and a report every E steps."""
    import torch
    from peft import LoraConfig, get_peft_model
    from torch.utils.data import DataLoader
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from raylora.builtin import ensure_gui_dataset, ensure_tiny_model

    context = ray.train.get_context()
    world_size, rank = context.get_world_size(), context.get_world_rank()
    torch.manual_seed(0)

    path = ensure_tiny_model()
    train_path, eval_path = ensure_gui_dataset()
    processor = AutoProcessor.from_pretrained(path)
    model = AutoModelForImageTextToText.from_pretrained(path, dtype=torch.float32)
    lora = LoraConfig(
        r=LORA_R, lora_alpha=LORA_ALPHA, lora_dropout=LORA_DROPOUT, target_modules=TARGET_MODULES
    )
    model = get_peft_model(model, lora)
    model = ray.train.torch.prepare_model(model)  # DDP (and the device)

    collate = make_collate(processor)
    train_loader = ray.train.torch.prepare_data_loader(
        DataLoader(read_records(train_path), batch_size=BATCH_SIZE, shuffle=True, collate_fn=collate)
    )
    eval_loader = ray.train.torch.prepare_data_loader(
        DataLoader(read_records(eval_path, config["eval_records"]), batch_size=BATCH_SIZE, collate_fn=collate)
    )
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=config["lr"])

    def eval_loss() -> float:
        model.eval()
        total = torch.zeros(2, dtype=torch.float64)
        with torch.no_grad():
            for batch in eval_loader:
                n = len(batch["input_ids"])
                total += torch.tensor([float(model(**batch).loss) * n, n], dtype=torch.float64)
        if world_size > 1:
            torch.distributed.all_reduce(total)
        model.train()
        return float(total[0] / total[1])

    max_steps, eval_every = config["max_steps"], config["eval_every"]
    step = epoch = 0
    model.train()
    while step < max_steps:
        if world_size > 1:
            train_loader.sampler.set_epoch(epoch)
        for batch in train_loader:
            loss = model(**batch).loss
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
            step += 1
            if step % eval_every == 0 or step == max_steps:
                metrics = {"step": step, "train_loss": loss.item(), "eval_loss": eval_loss()}
                if step == max_steps:
                    _report_with_adapter(metrics, model, rank)
                else:
                    ray.train.report(metrics)
            if step == max_steps:
                break
        epoch += 1


def _report_with_adapter(metrics: dict, model, rank: int) -> None:
    """The last report carries the trained adapter (rank 0 writes it), as in the docs' checkpointing guide."""
    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = None
        if rank == 0:
            getattr(model, "module", model).save_pretrained(tmp)  # unwrap DDP
            checkpoint = ray.train.Checkpoint.from_directory(tmp)
        ray.train.report(metrics, checkpoint=checkpoint)


# -- [2] the Tune function trainable that launches one Train run -----------------------------------


def driver(config: dict) -> None:
    """Tune trainable: one ``TorchTrainer`` per trial, named after the trial, metrics forwarded to Tune."""
    trainer = ray.train.torch.TorchTrainer(
        train_fn_per_worker,
        train_loop_config={k: config[k] for k in ("lr", "max_steps", "eval_every", "eval_records")},
        scaling_config=ray.train.ScalingConfig(
            num_workers=NUM_WORKERS, resources_per_worker={"CPU": CPUS_PER_WORKER}
        ),
        run_config=ray.train.RunConfig(
            name=f"train-{ray.tune.get_context().get_trial_id()}",
            storage_path=config["train_storage"],
            callbacks=[TuneReportCallback()],
        ),
    )
    trainer.fit()


# -- [3] the sweep -----------------------------------------------------------------------------------


def run(
    k: int, s: int, e: int, storage: str | Path, eval_records: int = EVAL_RECORDS
) -> tuple[float, list[dict]]:
    """Run K trials of S steps (reporting every E) one at a time; return (wall seconds, last results).

    The seconds run from before ``ray.init`` to after ``ray.shutdown``. Raises if any trial failed or
    stopped short of step S, so a broken baseline is never timed as a fast one.
    """
    storage = Path(storage).resolve()
    start = time.perf_counter()
    ray.init(num_cpus=2)
    try:
        tuner = ray.tune.Tuner(
            driver,
            param_space={
                "lr": ray.tune.loguniform(1e-4, 1e-2),
                "max_steps": s,
                "eval_every": e,
                "eval_records": eval_records,
                "train_storage": str(storage / "train"),
            },
            tune_config=ray.tune.TuneConfig(
                num_samples=k, max_concurrent_trials=1, metric="eval_loss", mode="min"
            ),
            run_config=ray.tune.RunConfig(storage_path=str(storage / "tune")),
        )
        results = tuner.fit()
    finally:
        ray.shutdown()
    seconds = time.perf_counter() - start

    if results.errors:
        raise RuntimeError(f"{len(results.errors)} trial(s) failed: {results.errors[0]!r}")
    trials = [
        {"lr": r.config["lr"], "step": r.metrics.get("step"), "eval_loss": r.metrics.get("eval_loss")}
        for r in results
    ]
    short = [t for t in trials if t["step"] != s]
    if len(trials) != k or short:
        raise RuntimeError(f"expected {k} trials reaching step {s}, got {trials}")
    return seconds, trials


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--k", type=int, default=3, help="trials")
    parser.add_argument("--s", type=int, default=20, help="training steps per trial")
    parser.add_argument("--e", type=int, default=5, help="report (and evaluate) every E steps")
    parser.add_argument("--eval-records", type=int, default=EVAL_RECORDS, help="eval records per evaluation")
    parser.add_argument("--storage", required=True, help="a fresh directory for Tune and Train results")
    args = parser.parse_args()
    if "RAYLORA_HOME" not in os.environ:
        parser.error("set RAYLORA_HOME to the home the tiny model and data were built in")
    seconds, trials = run(args.k, args.s, args.e, args.storage, args.eval_records)
    print(json.dumps({"seconds": seconds, "trials": trials}))


if __name__ == "__main__":
    main()
