"""Start-up and end of the quickstart: time to the first training step, to the first report, the longest
silence, and the end of the study, each against a bare ``python -c "import torch, transformers"`` floor
timed in the same run.

What is measured
----------------
``raylora init quickstart`` then ``raylora search quickstart.yaml --storage DIR --set study.num_trials=N``
in a fresh subprocess, not on a terminal (plain lines, as in ``ray job logs``), with
``RAYLORA_PROGRESS_EVERY_S=1`` so each running trial's step is printed every second. Every line is stamped
by this script as it arrives, from ``Popen``:

* **first step**: the first ``tNNN step k/M`` progress line (the pool hears rank 0's first step at once;
  the line follows within the 1 s poll);
* **first report**: the first evaluation event line (``tNNN step k eval/loss best ...``);
* **longest silence**: the largest gap between two consecutive lines, start to exit;
* **end**: from the ``done`` line after the last trial to the ``report: .../index.html`` line (the
  comparison with the base model, MLflow's end of the study, the report, the summary);
* **report.write**: the report of the finished study rewritten in this process after the same priming the
  driver does (:func:`raylora.tracking.report.prime`), timed alone.

The **floor** is the wall time of ``python -c "import torch, transformers"``, timed just before and just
after the study (their mean is used): the least any trial's worker pays before it can train. Ratios are
what count on a shared machine; the load average is printed with them.

``RAYLORA_HOME`` is a temp dir whose built-in model and data are built before any timing (so the study
pays no asset build), with no base-model or length cache: the study scores the base model and indexes the
data as a first study does. ``--fresh-home`` builds nothing beforehand (a new user's first study).

Usage (from the repo root; a few minutes)::

    .venv/bin/python benchmarks/startup.py                 # 2 trials of the quickstart
    .venv/bin/python benchmarks/startup.py --trials 1 --set training.max_steps=10

The last line printed is JSON: ``{"benchmark": "startup", "floor_s", "first_step_s", "first_report_s",
"first_step_ratio", "first_report_ratio", "longest_silence_s", "end_s", "report_write_s", "load", ...}``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
STEP = re.compile(r"\] t\d+ step \d+/\d+")
REPORT = re.compile(r"\] t\d+ step \d+ +\S+ best ")
DONE = re.compile(r"\] (done|stopped)  \| ")


def floor(env: dict) -> float:
    """Wall seconds of a bare ``import torch, transformers`` in a fresh interpreter."""
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", "import torch, transformers"], env=env, check=True)
    return time.perf_counter() - start


def stamped(cmd: list[str], cwd: Path, env: dict, log: Path, timeout: float) -> list[tuple[float, str]]:
    """Run ``cmd``; every output line with the seconds since start when it arrived (also written to
    ``log``). Raises when it fails or times out."""
    lines: list[tuple[float, str]] = []
    start = time.perf_counter()
    proc = subprocess.Popen(
        cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        start_new_session=True,
    )  # fmt: skip
    with log.open("w") as out:
        for line in proc.stdout:
            at = time.perf_counter() - start
            lines.append((at, line.rstrip("\n")))
            out.write(f"{at:7.1f} {line}")
            out.flush()
            if at > timeout:
                os.killpg(proc.pid, signal.SIGKILL)
                raise RuntimeError(f"timed out after {timeout:.0f} s; log {log}")
    rc = proc.wait()
    lines.append((time.perf_counter() - start, "<exit>"))
    if rc != 0:
        raise RuntimeError(f"exited {rc}; log {log}")
    return lines


def first(lines, pattern) -> float | None:
    return next((at for at, line in lines if pattern.search(line)), None)


def report_write_s(study_dir: Path) -> float:
    """Rewrite the finished study's report in this process, after priming as the driver does."""
    from raylora.record.trials import StudyRecord
    from raylora.tracking import report

    summary = json.loads((study_dir / "summary.json").read_text())
    record = StudyRecord(
        study_dir, summary["study"], summary["objective"]["metric"], summary["objective"]["mode"]
    )
    record.trials = StudyRecord.open_summary(study_dir / "summary.json")
    study = report.load_optuna(study_dir / "optuna.journal", summary["study"])
    report.prime()
    start = time.perf_counter()
    report.write(Path(tempfile.mkdtemp(prefix="raylora-report-")), record, study)
    return time.perf_counter() - start


def prepare_home(env: dict) -> None:
    code = "from raylora import builtin; builtin.ensure_tiny_model(); builtin.ensure_gui_dataset()"
    subprocess.run([sys.executable, "-c", code], env=env, check=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=2)
    parser.add_argument("--set", action="append", default=[], help="more --set overrides for the study")
    parser.add_argument("--fresh-home", action="store_true", help="build nothing before the study")
    parser.add_argument("--timeout", type=float, default=1800.0)
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="raylora-startup-"))
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env.update(RAYLORA_HOME=str(work / "home"), RAYLORA_PROGRESS_EVERY_S="1", PYTHONUNBUFFERED="1")
    if not args.fresh_home:
        prepare_home(env)
    raylora = [sys.executable, "-m", "raylora"]
    subprocess.run([*raylora, "init", "quickstart", str(work)], env=env, check=True, capture_output=True)
    load_before = os.getloadavg()
    floor_before = floor(env)
    sets = [f"study.num_trials={args.trials}", *args.set]
    cmd = [*raylora, "search", str(work / "quickstart.yaml"), "--storage", str(work / "studies")]
    cmd += [part for value in sets for part in ("--set", value)]
    cmd += ["--tracking-uri", f"sqlite:///{work / 'mlflow.db'}"]
    lines = stamped(cmd, work, env, work / "search.log", args.timeout)
    floor_after = floor(env)
    load_after = os.getloadavg()
    floor_s = (floor_before + floor_after) / 2

    times = [at for at, _ in lines]
    gaps = [b - a for a, b in zip([0.0, *times], times, strict=False)]
    done = first(lines, DONE)
    index = next((at for at, line in lines if line.startswith("report: ") and "index.html" in line), None)
    step, reported = first(lines, STEP), first(lines, REPORT)
    result = {
        "benchmark": "startup",
        "trials": args.trials,
        "floor_s": round(floor_s, 1),
        "floor_before_after_s": [round(floor_before, 1), round(floor_after, 1)],
        "first_line_s": round(times[0], 1),
        "first_step_s": step and round(step, 1),
        "first_report_s": reported and round(reported, 1),
        "first_step_ratio": step and round(step / floor_s, 2),
        "first_report_ratio": reported and round(reported / floor_s, 2),
        "longest_silence_s": round(max(gaps), 1),
        "end_s": done and index and round(index - done, 1),
        "report_write_s": round(report_write_s(work / "studies" / "quickstart"), 2),
        "wall_s": round(times[-1], 1),
        "load": [round(x, 1) for x in (*load_before, *load_after)],
        "log": str(work / "search.log"),
    }
    for key in ("floor_s", "first_line_s", "first_step_s", "first_report_s", "longest_silence_s", "end_s"):
        print(f"{key:>20}: {result[key]}")
    ratios = f"first step {result['first_step_ratio']}, first report {result['first_report_ratio']}"
    print(f"{'ratios':>20}: {ratios}")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
