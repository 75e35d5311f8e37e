"""Data larger than memory: ``raylora train``'s peak memory for 300 against 3,000 screenshots, and the data
loader's speed against what the training step consumes.

What is measured
----------------
1. **Memory against dataset size.** Two JSONL datasets of synthetic 1280×720 GUI screenshots (drawn like
   ``builtin:gui-grounding``'s, each file distinct), one of ``--small`` and one of ``--large`` records.
   ``raylora train`` runs on each as a fresh subprocess with the same spec: the built-in tiny Qwen3-VL,
   ``data.image.max_pixels: 1003520`` (``scope_study.yaml``'s bound: 880 image tokens per shot), batch 1,
   ``--steps`` steps, two DataLoader workers. The benchmark samples the memory of the subprocess *and its
   DataLoader workers* every 0.2 s and reports the peak of their summed PSS (proportional set size: pages a
   forked worker shares with its parent are counted once, split between them) and of their summed RSS
   (which counts shared pages in every process, an upper bound). Target: large/small ≤ 1.2 and the large
   run under 4 GiB.
2. **Loader against step.** In one process, on the large dataset: samples/s the loader delivers alone
   (``raylora.train.loader.batches`` with two workers, after a warm-up batch) against samples/s one
   training step consumes (forward, backward and optimizer step of the tiny model on an already-encoded
   batch, after a warm-up step). Target: loader/step ≥ 2. On a GPU the step is faster and the ratio
   smaller; on the 2-core reference machine the two compete for the same cores, so the ratio is measured
   with each side alone.

Run: ``python benchmarks/data_scale.py`` (about 10 minutes on 2 CPUs, most of it drawing 3,300 PNGs).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

WIDTH, HEIGHT = 1280, 720
MAX_PIXELS = 1_003_520


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--small", type=int, default=300)
    parser.add_argument("--large", type=int, default=3000)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--timed", type=int, default=8, help="batches/steps timed in part 2")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="raylora-data-scale-"))
    env = {**os.environ, "RAYLORA_HOME": str(work / "home")}
    os.environ.update(env)
    started = time.perf_counter()
    shots = _draw(work / "shots", args.large)
    small = _dataset(work / "small.jsonl", shots[: args.small])
    large = _dataset(work / "large.jsonl", shots)
    print(f"drew {len(shots)} {WIDTH}×{HEIGHT} screenshots in {time.perf_counter() - started:.0f} s")

    spec = work / "spec.yaml"
    spec.write_text(
        "study: {name: data-scale, objective: {metric: train/loss, mode: min}}\n"
        "data:\n"
        "  eval: null\n"
        "  max_length: 2048\n"
        f"  image: {{max_pixels: {MAX_PIXELS}}}\n"
        "  loader_workers: 2\n"
        "training:\n"
        f"  max_steps: {args.steps}\n"
        f"  eval_every: {args.steps}\n"
        "  per_device_train_batch_size: 1\n"
        "  click_eval_samples: 0\n"
    )
    peaks = {}
    for name, path in (("small", small), ("large", large)):
        peaks[name] = _peak_memory(spec, path, work / f"out-{name}", env)
        pss, rss = (value / 2**20 for value in peaks[name])
        print(f"{name}: {path.name} peak PSS {pss:.0f} MiB, RSS {rss:.0f} MiB")

    loader_rate, step_rate = _rates(spec, large, args.timed)
    pss_ratio = peaks["large"][0] / peaks["small"][0]
    rss_ratio = peaks["large"][1] / peaks["small"][1]
    print()
    print(f"| measure | {args.small} shots | {args.large} shots | ratio | target |")
    print("|---|---|---|---|---|")
    print(
        f"| peak PSS, train + loader workers | {peaks['small'][0] / 2**20:.0f} MiB | "
        f"{peaks['large'][0] / 2**20:.0f} MiB | {pss_ratio:.2f} | ≤ 1.2, < 4 GiB |"
    )
    print(
        f"| peak RSS, summed (upper bound) | {peaks['small'][1] / 2**20:.0f} MiB | "
        f"{peaks['large'][1] / 2**20:.0f} MiB | {rss_ratio:.2f} | |"
    )
    print()
    print("| loader samples/s (2 workers) | step samples/s | loader/step | target |")
    print("|---|---|---|---|")
    print(f"| {loader_rate:.2f} | {step_rate:.2f} | {loader_rate / step_rate:.2f} | ≥ 2 |")
    ok = pss_ratio <= 1.2 and peaks["large"][0] < 4 * 2**30 and loader_rate / step_rate >= 2
    print("\nall targets met" if ok else "\nTARGET MISSED")


def _draw(folder: Path, count: int) -> list[Path]:
    from concurrent.futures import ProcessPoolExecutor

    folder.mkdir(parents=True)
    with ProcessPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        return list(pool.map(_draw_one, [(folder, i) for i in range(count)], chunksize=32))


def _draw_one(job) -> tuple[Path, dict]:
    import random

    from raylora.builtin import gui_data

    folder, index = job
    rng = random.Random(f"data-scale:{index}")
    widgets = gui_data.layout_widgets(rng, WIDTH, HEIGHT)
    target = rng.choice(widgets)
    path = folder / f"{index}.png"
    gui_data.draw_screenshot(rng, WIDTH, HEIGHT, widgets).save(path, format="PNG")
    return path, gui_data.grounding_record(str(path), target, WIDTH, HEIGHT)


def _dataset(path: Path, shots: list) -> Path:
    path.write_text("".join(json.dumps(record) + "\n" for _, record in shots))
    return path


def _peak_memory(spec: Path, data: Path, out: Path, env: dict) -> tuple[int, int]:
    """Peak (summed PSS, summed RSS) of ``raylora train`` and its children, sampled every 0.2 s."""
    import psutil

    command = [sys.executable, "-m", "raylora", "train", str(spec), "--output", str(out)]
    command += ["--set", f"data.train={data}"]
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    root = psutil.Process(process.pid)
    peak_pss = peak_rss = 0
    while process.poll() is None:
        pss = rss = 0
        for proc in [root, *root.children(recursive=True)]:
            try:
                info = proc.memory_full_info()
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue
            pss, rss = pss + info.pss, rss + info.rss
        peak_pss, peak_rss = max(peak_pss, pss), max(peak_rss, rss)
        time.sleep(0.2)
    if process.returncode != 0:
        raise SystemExit(f"raylora train failed on {data}:\n{process.stderr.read().decode()[-2000:]}")
    metrics = json.loads((out / "metrics.json").read_text())
    last = metrics[-1] if isinstance(metrics, list) else metrics
    if last.get("step") != int(spec.read_text().split("max_steps: ")[1].split()[0]):
        raise SystemExit(f"raylora train on {data} did not reach its last step: {last}")
    return peak_pss, peak_rss


def _rates(spec_path: Path, data_path: Path, timed: int) -> tuple[float, float]:
    import torch

    from raylora import builtin, load_spec
    from raylora.train import encode, loader
    from raylora.train import model as model_lib

    spec = load_spec(spec_path, [f"data.train={data_path}"])
    path = builtin.resolve_model(spec.model.name_or_path)
    built = model_lib.build(spec, path, torch.device("cpu"))
    processor = built.processor
    image_kw = encode.image_kwargs(spec.data.image.min_pixels, spec.data.image.max_pixels, processor)
    split = loader.open_split(str(data_path), processor, spec.data.max_length, image_kw)
    pad = processor.tokenizer.pad_token_id

    batches = loader.batches(split, 1, pad, seed=0, workers=2)
    batch = next(batches)  # warm-up: workers started, first batch encoded
    started = time.perf_counter()
    for _ in range(timed):
        next(batches)
    loader_rate = timed / (time.perf_counter() - started)
    del batches

    groups = model_lib.param_groups(built.model, built.model_type, spec)
    optimizer = torch.optim.AdamW(groups)
    built.model.train()

    def step() -> None:
        built.model(**batch, use_cache=False).loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    step()  # warm-up
    started = time.perf_counter()
    for _ in range(timed):
        step()
    step_rate = timed / (time.perf_counter() - started)
    return loader_rate, step_rate


if __name__ == "__main__":
    main()
