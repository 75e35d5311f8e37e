"""Make the tiny learning-curve table the search replay's ``--table tiny`` reads.

Trains the built-in tiny Qwen3-VL (``search_spaces/quickstart.yaml``) over the quickstart search space,
with scope and quantization searched too, every configuration to the end: its eval loss at each
evaluation, its seconds and its peak memory. Configurations are random draws (Optuna's RandomSampler,
seed ``--seed``) of the space raylora itself samples. In-process, one configuration after another, no Ray.
Rows are appended to the output as they finish, so an interrupted run continues where it stopped.

    .venv/bin/python benchmarks/make_tiny_table.py --configs 24 --steps 20 --eval-every 4
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks" / "data" / "tiny_quickstart_table.json"


def base_spec(steps: int, every: int, quantization: list[str]) -> dict:
    data = yaml.safe_load((ROOT / "search_spaces" / "quickstart.yaml").read_text())
    data["training"].update({"max_steps": steps, "eval_every": every, "click_eval_samples": 0})
    data["search"]["training.quantization"] = {"choice": quantization}
    return data


def draws(spec, count: int, seed: int) -> list[dict]:
    """``count`` configurations from raylora's own define-by-run space, decoded to spec paths."""
    import optuna

    from raylora.spec import space

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
    sample, out = space.define_by_run(spec), []
    for _ in range(count):
        trial = study.ask()
        sample(trial)
        out.append(space.decode(spec, trial.params))
        study.tell(trial, 0.0)
    return out


def curve(spec, params: dict, folder: Path) -> dict:
    """Train one configuration; its eval losses, seconds and peak memory."""
    from raylora.train import LocalSession
    from raylora.train import train as run_train

    session = LocalSession(folder, log=lambda line: None, live=False)
    start = time.monotonic()
    run_train(spec.with_values(params), session)
    seconds = time.monotonic() - start
    evals = [h for h in session.history if "eval/loss" in h]
    return {
        "params": params,
        "eval_loss": [float(h["eval/loss"]) for h in evals],
        "eval_steps": [int(h["step"]) for h in evals],
        "seconds": round(seconds, 3),
        "peak_mem_gb": max((float(h.get("cost/peak_mem_gb", 0.0)) for h in evals), default=0.0),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--configs", type=int, default=24)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--eval-every", type=int, default=4)
    parser.add_argument("--seed", type=int, default=27)
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    import importlib.util
    import tempfile

    from raylora.spec.load import build

    quantization = ["none", "nf4"] if importlib.util.find_spec("bitsandbytes") else ["none"]
    data = base_spec(args.steps, args.eval_every, quantization)
    spec = build(data)
    table = json.loads(args.out.read_text()) if args.out.is_file() else None
    if table is None:
        table = {
            "description": (
                f"raylora's built-in tiny Qwen3-VL on builtin:gui-grounding: {args.configs} random "
                f"configurations of the quickstart space (scope, rank, learning rates, quantization "
                f"{quantization}), {args.steps} steps each, eval loss every {args.eval_every} steps; seconds "
                "on a shared 2-core CPU. Made by benchmarks/make_tiny_table.py."
            ),
            "search": data["search"],
            "eval_steps": list(range(args.eval_every, args.steps + 1, args.eval_every)),
            "rows": [],
        }
    for i, params in enumerate(draws(spec, args.configs, args.seed)):
        if i < len(table["rows"]):
            continue
        with tempfile.TemporaryDirectory() as tmp:
            row = curve(spec, params, Path(tmp))
        table["rows"].append(row)
        args.out.write_text(json.dumps(table) + "\n")
        print(f"{i + 1}/{args.configs}: {row['seconds']:.0f}s final {row['eval_loss'][-1]:.4f}", flush=True)


if __name__ == "__main__":
    main()
