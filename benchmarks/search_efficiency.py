"""Search efficiency: TPE + ASHA against random search without early stopping, on the quickstart task.

For each seed, both studies run the same number of trials one at a time (so the order of trials is the order
of training steps spent). The measure is the training steps TPE + ASHA spends until one of its completed
trials reaches the random search's final best objective, divided by the steps random search spent in all
(its budget for that best). Target: ≤ 0.5 (median over seeds). A seed where TPE + ASHA never reaches it
counts as its whole budget plus one trial (ratio > 1).

    .venv/bin/python benchmarks/search_efficiency.py --seeds 0 1 2 --trials 8
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def study(tmp: Path, name: str, seed: int, trials: int, sampler: str, scheduler: str) -> list[dict]:
    spec = yaml.safe_load((ROOT / "search_spaces" / "quickstart.yaml").read_text())
    spec["study"].update(
        {
            "name": name,
            "num_trials": trials,
            "max_concurrent_trials": 1,
            "sampler": {"type": sampler, "seed": seed},
            "scheduler": {"type": scheduler, "grace_steps": 10, "reduction_factor": 2},
        }
    )
    spec["training"]["click_eval_samples"] = 0
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    cmd = [
        sys.executable,
        "-m",
        "raylora",
        "search",
        str(path),
        "--storage",
        str(tmp / "st"),
        "--tracking-uri",
        f"sqlite:///{tmp}/mlflow.db",
    ]
    proc = subprocess.run(cmd, cwd=tmp, capture_output=True, text=True, env=os.environ)
    if proc.returncode != 0:
        raise RuntimeError(
            f"{name}: raylora search exited {proc.returncode}:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
        )
    summary = json.loads((tmp / "st" / name / "summary.json").read_text())
    return sorted(summary["trials"], key=lambda t: t["trial_id"])


def steps_to_reach(trials: list[dict], target: float) -> int | None:
    spent = 0
    for t in trials:
        spent += t["steps"]
        if t["state"] == "COMPLETE" and t["value"] is not None and t["value"] <= target:
            return spent
    return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--trials", type=int, default=8)
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp_root:
        os.environ.setdefault("RAYLORA_HOME", str(Path(tmp_root) / "home"))
        for seed in args.seeds:
            tmp = Path(tmp_root) / f"seed{seed}"
            tmp.mkdir()
            random_trials = study(tmp, f"random{seed}", seed, args.trials, "random", "fifo")
            tpe_trials = study(tmp, f"tpe{seed}", seed, args.trials, "tpe", "asha")
            best = min(t["value"] for t in random_trials if t["state"] == "COMPLETE")
            budget = sum(t["steps"] for t in random_trials)
            reached = steps_to_reach(tpe_trials, best)
            spent = reached if reached is not None else budget + max(t["steps"] for t in random_trials)
            rows.append(
                {
                    "seed": seed,
                    "random_best": best,
                    "random_steps": budget,
                    "tpe_asha_steps": spent,
                    "reached": reached is not None,
                    "ratio": spent / budget,
                }
            )
            print(
                f"seed {seed}: random best {best:.4f} after {budget} steps; TPE+ASHA "
                f"{'reached it after' if reached else 'did not reach it in'} {spent} steps "
                f"(ratio {spent / budget:.2f})"
            )
    median = statistics.median(r["ratio"] for r in rows)
    print(
        json.dumps(
            {
                "benchmark": "search_efficiency",
                "trials": args.trials,
                "rows": rows,
                "median_ratio": median,
                "target": 0.5,
            }
        )
    )


if __name__ == "__main__":
    main()
