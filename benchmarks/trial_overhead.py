"""Trial overhead: ``raylora search`` against Ray's documented Tune + Train V2 pattern, same study.

What is measured
----------------
One study -- K trials of S optimizer steps each, an eval loss and a report every E steps, 2 Ray Train
workers per trial (0.5 CPU each), one trial at a time, no early stopping -- run two ways:

* **documented**: ``benchmarks/documented_pattern.py``, a hand-written copy of Ray's documented pattern
  (a Tune function trainable that fits a ``TorchTrainer`` whose workers run a plain PEFT loop, metrics
  forwarded with ``TuneReportCallback``);
* **raylora**: ``python -m raylora search study.yaml --storage DIR`` with a study YAML that asks for the
  same thing.

Each side is the wall time of a whole fresh subprocess, from ``Popen`` to exit: interpreter start, imports,
``ray.init``, every trial's worker-group start-up, model build, data, training, evaluation, reports,
teardown and ``ray.shutdown``. That is what a user waits for. The sides alternate (documented, raylora,
documented, ...) for ``--rounds`` rounds, each with a fresh storage directory, and the table reports the
median of the rounds. For context, a **floor** is also timed: one subprocess that only imports torch,
transformers and peft and builds the LoRA model once -- the least any trial's worker must pay.

Why it is fair
--------------
* Same model bytes and data bytes: one ``RAYLORA_HOME`` (a temp dir) is built before any timing with
  ``raylora.builtin.ensure_tiny_model()`` / ``ensure_gui_dataset()`` and shared by both sides, so neither
  pays a cache build. The documented side loads the model with plain ``from_pretrained``.
* Same work per trial: float32 on CPU, LoRA r=16 / alpha=32 / dropout 0.05 on the LLM projections only,
  per-device batch 2, S steps, the same number of eval records every E steps (sharded over the two workers
  and all-reduced on both sides), no generation-based eval (``click_eval_samples: 0``).
* Same Ray shape: 2 CPUs on one node (raylora's ``ray.init`` takes the machine's CPUs; the documented side
  asks for ``num_cpus=2``, the same on the 2-core reference machine), 2 workers x 0.5 CPU, one trial at a
  time, FIFO scheduling, learning rate sampled log-uniformly from [1e-4, 1e-2]. Both subprocesses run
  with the same environment (``RAY_ADDRESS`` removed so each starts its own local Ray) from their own run
  directory.
* Where they differ, the difference costs raylora: it keeps its defaults (activation checkpointing,
  gradient clipping, a cosine schedule, a first-step gradient check, an adapter + optimizer checkpoint at
  every report, its study journal and summary), while the documented loop does the plain minimum and
  checkpoints the adapter once, at its last report.
* Both runs are checked: every trial must reach step S (raylora: ``summary.json`` says COMPLETE with S
  steps; documented: no Tune errors and a last result at step S), or the benchmark fails instead of timing
  a broken run. After each timed run the benchmark waits (untimed) until every process the subprocess
  started -- Ray daemons outlive the driver for a while -- has exited, so one side's teardown never slows
  the other side's start; the wait is printed for context.

Usage (from the repo root; takes minutes at the defaults)::

    .venv/bin/python benchmarks/trial_overhead.py                  # K=3, S=20, E=5, 1 round
    .venv/bin/python benchmarks/trial_overhead.py --k 1 --s 4 --e 2  # smoke test

The last line printed is JSON: ``{"benchmark": "trial_overhead", "k", "s", "e", "documented_s",
"raylora_s", "ratio": raylora_s / documented_s, "target": 0.5, ...}``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
DOCUMENTED = HERE / "documented_pattern.py"
TARGET = 0.5
EVAL_SAMPLES = 4
"""Eval records per evaluation, on both sides."""

FLOOR = """
import torch, transformers, peft
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForImageTextToText, AutoProcessor
from raylora.builtin import ensure_tiny_model
path = ensure_tiny_model()
AutoProcessor.from_pretrained(path)
model = AutoModelForImageTextToText.from_pretrained(path, dtype=torch.float32)
get_peft_model(model, LoraConfig(r=16, lora_alpha=32, lora_dropout=0.05,
    target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]))
"""


def study_spec(k: int, s: int, e: int) -> dict:
    """The raylora study equivalent to ``documented_pattern.run(k, s, e)``."""
    return {
        "study": {
            "name": "overhead",
            "objective": {"metric": "eval/loss", "mode": "min"},
            "num_trials": k,
            "max_concurrent_trials": 1,
            "sampler": {"type": "random", "seed": 0},
            "scheduler": {"type": "fifo"},
        },
        "model": {"name_or_path": "builtin:tiny-qwen3-vl", "dtype": "float32"},
        "data": {
            "train": "builtin:gui-grounding",
            "eval": "builtin:gui-grounding",
            "eval_samples": EVAL_SAMPLES,
        },
        "resources": {"workers_per_trial": 2, "cpus_per_worker": 0.5, "gpus_per_worker": 0},
        "training": {
            "max_steps": s,
            "eval_every": e,
            "per_device_train_batch_size": 2,
            "per_device_eval_batch_size": 2,
            "click_eval_samples": 0,
            "lora": {"r": 16, "alpha": 32, "dropout": 0.05, "scope": ["llm"]},
        },
        "search": {"training.learning_rate.llm": {"loguniform": [1.0e-4, 1.0e-2]}},
    }


# -- running one side --------------------------------------------------------------------------------


def session_processes(sid: int) -> list[int]:
    """Processes still in session ``sid``: a side's subprocess and the Ray daemons and workers it started."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # pid (comm) state ppid pgrp session ...; comm may hold spaces, so split after its ")".
        if int(stat.rsplit(")", 1)[1].split()[3]) == sid:
            pids.append(int(entry.name))
    return pids


def reap(sid: int, timeout: float = 120.0) -> float:
    """Wait (untimed) until nothing the subprocess started is left; return how long that took.

    Ray daemons outlive ``ray.shutdown()`` and the driver's exit by a while. Waiting for them keeps one
    side's teardown from slowing the next side's start; anything still there after ``timeout`` is killed.
    """
    start = time.perf_counter()
    while session_processes(sid) and time.perf_counter() - start < timeout:
        time.sleep(0.2)
    left = session_processes(sid)
    if left:
        print(
            f"warning: {len(left)} process(es) of session {sid} still running after {timeout:.0f} s; killing"
        )
        for pid in left:  # all started by our subprocess: they are in the session it leads
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    return time.perf_counter() - start


def timed(cmd: list[str], cwd: Path, env: dict, log: Path, timeout: float) -> tuple[float, float]:
    """(wall seconds of one subprocess from start to exit, untimed seconds its leftovers took to exit).

    Output goes to ``log``; raises if the subprocess fails or times out.
    """
    with log.open("w") as out:
        start = time.perf_counter()
        proc = subprocess.Popen(
            cmd, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
        try:
            rc = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)  # the child and the local Ray it started
            proc.wait()
            raise RuntimeError(f"{cmd[1:4]} timed out after {timeout:.0f} s; log: {log}") from None
        seconds = time.perf_counter() - start
    linger = reap(proc.pid)
    if rc != 0:
        tail = log.read_text()[-4000:]
        raise RuntimeError(f"{' '.join(cmd[:4])} ... exited {rc}; log {log}:\n{tail}")
    return seconds, linger


def run_documented(k: int, s: int, e: int, run_dir: Path, env: dict, timeout: float) -> dict:
    """Time ``documented_pattern.py``: subprocess seconds, its own ray.init → shutdown seconds, linger."""
    cmd = [sys.executable, str(DOCUMENTED), "--k", str(k), "--s", str(s), "--e", str(e)]
    cmd += ["--eval-records", str(EVAL_SAMPLES), "--storage", str(run_dir / "storage")]
    log = run_dir / "documented.log"
    seconds, linger = timed(cmd, run_dir, env, log, timeout)
    last = [line for line in log.read_text().splitlines() if line.startswith('{"seconds"')][-1]
    return {"seconds": seconds, "inner": json.loads(last)["seconds"], "linger": linger}


def run_raylora(k: int, s: int, e: int, run_dir: Path, env: dict, timeout: float) -> dict:
    """Time ``raylora search`` on the equivalent study; check every trial completed all S steps."""
    spec_path = run_dir / "study.yaml"
    spec_path.write_text(yaml.safe_dump(study_spec(k, s, e), sort_keys=False))
    storage = run_dir / "storage"
    cmd = [sys.executable, "-m", "raylora", "search", str(spec_path), "--storage", str(storage)]
    log = run_dir / "raylora.log"
    seconds, linger = timed(cmd, run_dir, env, log, timeout)
    trials = json.loads((storage / "overhead" / "summary.json").read_text())["trials"]
    done = [t for t in trials if t["state"] == "COMPLETE" and t["steps"] == s]
    if len(trials) != k or len(done) != k:
        states = [(t["trial_id"], t["state"], t["steps"], t.get("error")) for t in trials]
        raise RuntimeError(f"raylora: expected {k} COMPLETE trials of {s} steps, got {states}; log: {log}")
    return {"seconds": seconds, "linger": linger}


SIDES = {"documented": run_documented, "raylora": run_raylora}


# -- main --------------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--k", type=int, default=3, help="trials per study (default 3)")
    parser.add_argument("--s", type=int, default=20, help="training steps per trial (default 20)")
    parser.add_argument("--e", type=int, default=5, help="evaluate and report every E steps (default 5)")
    parser.add_argument("--rounds", type=int, default=1, help="alternating documented/raylora rounds")
    parser.add_argument("--timeout", type=float, default=3600, help="seconds allowed per subprocess")
    parser.add_argument("--keep", action="store_true", help="keep the temp dir (logs, storage)")
    args = parser.parse_args()
    if not (0 < args.e <= args.s) or args.k < 1 or args.rounds < 1:
        parser.error("need k >= 1, rounds >= 1 and 0 < e <= s")

    work = Path(tempfile.mkdtemp(prefix="raylora-bench-"))
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env.update(RAYLORA_HOME=str(work / "home"), PYTHONUNBUFFERED="1")
    runs: dict[str, list[dict]] = {side: [] for side in SIDES}
    try:
        os.environ["RAYLORA_HOME"] = env["RAYLORA_HOME"]
        from raylora import builtin

        print(f"building the tiny model and data in {env['RAYLORA_HOME']} (untimed) ...", flush=True)
        builtin.ensure_tiny_model()
        builtin.ensure_gui_dataset()

        floor_dir = work / "floor"
        floor_dir.mkdir()
        floor, _ = timed([sys.executable, "-c", FLOOR], floor_dir, env, floor_dir / "floor.log", args.timeout)
        print(f"floor (imports + one model build): {floor:.1f} s", flush=True)

        for r in range(args.rounds):
            for side, run in SIDES.items():
                run_dir = work / f"round{r}-{side}"
                run_dir.mkdir()
                out = run(args.k, args.s, args.e, run_dir, env, args.timeout)
                runs[side].append(out)
                inner = f", ray.init → shutdown {out['inner']:.1f} s" if "inner" in out else ""
                print(
                    f"round {r}: {side:<10} {out['seconds']:6.1f} s{inner}"
                    f" (its processes took {out['linger']:.1f} s more to exit, untimed)",
                    flush=True,
                )
    finally:
        if args.keep:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)

    seconds = {side: [out["seconds"] for out in outs] for side, outs in runs.items()}
    doc_s, ray_s = statistics.median(seconds["documented"]), statistics.median(seconds["raylora"])
    print()
    print(f"K={args.k} trials x S={args.s} steps, report every E={args.e}; median of {args.rounds} round(s)")
    print(f"{'side':<12}{'total s':>10}{'s / trial':>12}")
    print(f"{'documented':<12}{doc_s:>10.1f}{doc_s / args.k:>12.1f}")
    print(f"{'raylora':<12}{ray_s:>10.1f}{ray_s / args.k:>12.1f}")
    print(f"{'floor':<12}{floor:>10.1f}{'':>12}  (one process: imports + model build)")
    print(f"ratio raylora / documented = {ray_s / doc_s:.3f} (target <= {TARGET})")
    result = {
        "benchmark": "trial_overhead",
        "k": args.k,
        "s": args.s,
        "e": args.e,
        "documented_s": round(doc_s, 3),
        "raylora_s": round(ray_s, 3),
        "ratio": round(ray_s / doc_s, 4),
        "target": TARGET,
        "floor_s": round(floor, 3),
        "rounds": args.rounds,
        "documented_runs_s": [round(x, 3) for x in seconds["documented"]],
        "raylora_runs_s": [round(x, 3) for x in seconds["raylora"]],
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
