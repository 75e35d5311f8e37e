"""GPU check: raylora's training loop on a Qwen3-VL-2B-shaped model against a bare Hugging Face Trainer.

For each case — bf16 LoRA on [llm], bf16 LoRA on [llm, vision], nf4 LoRA on [llm], and [llm, vision] with
every screenshot at ``max_pixels`` (the size the memory estimate assumes) — this trains S steps with
`raylora train`'s recipe (the one Ray Train workers run) on random weights saved once in the real checkpoint
format, then the first two with the same model, LoRA and batches through `transformers.Trainer`. Both are
timed over the same last steps, about a third of them (raylora's last report window; a Trainer callback
from the report before it). It prints tokens/s, model FLOPs utilization (6 × trained-path parameters ×
tokens/s over the GPU's dense bf16 peak; attention FLOPs left out, so MFU is slightly understated), peak
memory (torch.cuda.max_memory_allocated) against `raylora.estimate`, and a final JSON line. Targets: MFU
≥ 45% for [llm] in bf16, and not below the Trainer. ``--tiny`` runs a 2-layer model of the same
architecture on whatever device there is (a CPU in 20 s): check the script before a lease.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PEAK_BF16_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0, "L40S": 362.0}


def qwen3_vl_2b_config():
    from transformers import Qwen3VLConfig

    text = dict(
        vocab_size=151936,
        hidden_size=2048,
        intermediate_size=6144,
        num_hidden_layers=28,
        num_attention_heads=16,
        num_key_value_heads=8,
        head_dim=128,
        max_position_embeddings=32768,
        rope_parameters={
            "rope_type": "default",
            "rope_theta": 5_000_000.0,
            "mrope_section": [24, 20, 20],
            "mrope_interleaved": True,
        },
        tie_word_embeddings=True,
    )
    vision = dict(
        depth=24,
        hidden_size=1024,
        intermediate_size=4096,
        num_heads=16,
        patch_size=16,
        spatial_merge_size=2,
        temporal_patch_size=2,
        out_hidden_size=2048,
        num_position_embeddings=2304,
        deepstack_visual_indexes=[5, 11, 17],
    )
    return Qwen3VLConfig(text_config=text, vision_config=vision, tie_word_embeddings=True)


def tiny_config():
    """The same architecture at a size a CPU trains in seconds: `--tiny` checks this script before a lease."""
    from transformers import Qwen3VLConfig

    full = qwen3_vl_2b_config()
    text = full.text_config.to_dict() | dict(
        hidden_size=256,
        intermediate_size=512,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=64,
    )
    text["rope_parameters"] = dict(text["rope_parameters"], mrope_section=[8, 12, 12])
    vision = full.vision_config.to_dict() | dict(
        depth=2,
        hidden_size=128,
        intermediate_size=256,
        num_heads=4,
        out_hidden_size=256,
        deepstack_visual_indexes=[0],
    )
    return Qwen3VLConfig(text_config=text, vision_config=vision, tie_word_embeddings=True)


def save_random_checkpoint(out: Path, device: str, tiny: bool) -> Path:
    """Random 2B-shaped weights + the builtin processor, in the format from_pretrained reads."""
    import torch
    from transformers import AutoProcessor, Qwen3VLForConditionalGeneration

    from raylora import builtin

    processor = AutoProcessor.from_pretrained(builtin.ensure_tiny_model())
    config = tiny_config() if tiny else qwen3_vl_2b_config()
    tok = processor.tokenizer
    for key, token in (
        ("image_token_id", "<|image_pad|>"),
        ("video_token_id", "<|video_pad|>"),
        ("vision_start_token_id", "<|vision_start|>"),
        ("vision_end_token_id", "<|vision_end|>"),
    ):
        setattr(config, key, tok.convert_tokens_to_ids(token))
    with torch.device(device):
        model = Qwen3VLForConditionalGeneration(config).to(torch.bfloat16)
    model.save_pretrained(out)
    processor.save_pretrained(out)
    del model
    if device == "cuda":
        torch.cuda.empty_cache()
    return out


def raylora_case(checkpoint: Path, scope: str, quant: str, extra: list, args, out: Path, cuda: bool) -> dict:
    steps, batch = args.steps, args.batch
    import torch

    from raylora import spec as spec_lib
    from raylora.train import LocalSession, estimate, train

    spec = spec_lib.load(
        ROOT / "search_spaces" / "quickstart.yaml",
        [
            f"model.name_or_path={checkpoint}",
            "model.dtype=bfloat16",
            f"training.lora.scope={scope}",
            f"training.quantization={quant}",
            f"training.max_steps={steps}",
            f"training.eval_every={report_every(steps)}",
            f"training.per_device_train_batch_size={batch}",
            "training.click_eval_samples=0",
            "data.eval=null",
            "study.objective.metric=train/loss",
            "data.image.min_pixels=200704",
            "data.image.max_pixels=401408",
            "data.max_length=4096",
            f"resources.gpus_per_worker={int(cuda)}",
            *extra,
            *args.set,
        ],
    )
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    if args.profile:
        from torch.profiler import ProfilerActivity, profile

        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
        with profile(activities=activities) as prof:
            outcome = train(spec, LocalSession(out, log=lambda line: None))
        for key in ("self_cpu_time_total", "self_device_time_total" if cuda else "cpu_time_total"):
            print(prof.key_averages().table(sort_by=key, row_limit=18), flush=True)
    else:
        outcome = train(spec, LocalSession(out, log=lambda line: None))
    predicted = estimate.estimate(spec)
    trained_path = sum(p.numel() for n, p in outcome.model.named_parameters() if "lora_" not in n)
    return {
        "tokens_per_s": outcome.metrics["tokens_per_s"],
        "peak_gib": torch.cuda.max_memory_allocated() / 2**30 if cuda else float("nan"),
        "estimate_gib": predicted.total_bytes / 2**30,
        "params": trained_path,
        "spec": spec,
    }


def trainer_case(spec, steps: int) -> dict:
    """The same model, LoRA and data through a bare transformers.Trainer."""
    import torch
    from transformers import Trainer, TrainingArguments

    from raylora import builtin
    from raylora.train import encode, loader, model

    cuda = torch.cuda.is_available()
    built = model.build(spec, spec.model.name_or_path, torch.device("cuda" if cuda else "cpu"))
    kw = encode.image_kwargs(spec.data.image.min_pixels, spec.data.image.max_pixels, built.processor)
    items = list(
        loader.open_split(
            builtin.resolve_data(spec.data.train, "train"), built.processor, spec.data.max_length, kw
        ).items
    )
    pad = built.processor.tokenizer.pad_token_id
    args = TrainingArguments(
        output_dir=tempfile.mkdtemp(),
        max_steps=steps,
        report_to=[],
        bf16=True,
        use_cpu=not cuda,
        disable_tqdm=True,
        per_device_train_batch_size=spec.training.per_device_train_batch_size,
        learning_rate=spec.training.learning_rate.llm,
        logging_steps=steps,
        save_strategy="no",
        remove_unused_columns=False,
        dataloader_num_workers=0,
    )
    trainer = Trainer(
        model=built.model,
        args=args,
        train_dataset=items,
        data_collator=lambda batch: encode.collate(batch, pad),
    )
    # The Trainer cycles through the items (shuffled each epoch): count the tokens of the samples it takes.
    per_item = sum(int(it["input_ids"].numel()) for it in items) / len(items)
    # Timed over the same steps as raylora's last report window.
    from_step = last_window_start(steps)
    timer = _steady_timer(from_step, cuda)
    trainer.add_callback(timer)
    trainer.train()
    tokens = per_item * (steps - from_step) * args.per_device_train_batch_size
    return {"tokens_per_s": tokens / timer.seconds}


def report_every(steps: int) -> int:
    """raylora's report interval in this check: reports at a third and two thirds of the steps, so its last
    report's window is the steady state, without the loader's start and the first steps' allocations."""
    return max(steps // 3, 1)


def last_window_start(steps: int) -> int:
    """The step after which raylora's last report window begins (the report before the last; 0 if none).
    The recipe reports every ``report_every(steps)`` steps and at the last step."""
    every = report_every(steps)
    return (steps - 1) // every * every


def _steady_timer(from_step: int, cuda: bool):
    """A Trainer callback timing from the end of step ``from_step`` (0: the start) to the end of training,
    the GPU drained at both ends; ``.seconds`` once training ended."""
    from transformers import TrainerCallback

    def now() -> float:
        if cuda:
            import torch

            torch.cuda.synchronize()
        return time.perf_counter()

    class SteadyTimer(TrainerCallback):
        start = seconds = None

        def on_train_begin(self, args, state, control, **kwargs):
            if from_step == 0:
                self.start = now()

        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == from_step:
                self.start = now()

        def on_train_end(self, args, state, control, **kwargs):
            self.seconds = now() - self.start

    return SteadyTimer()


CASES = (
    # label, LoRA scope, quantization, more overrides (a case with overrides has no Trainer twin)
    ("bf16 [llm]", "[llm]", "none", []),
    ("bf16 [llm, vision]", "[llm, vision]", "none", []),
    ("nf4 [llm]", "[llm]", "nf4", []),
    # Every screenshot at max_pixels, the size the memory estimate assumes: its check at full size.
    ("bf16 [llm, vision] max_pixels", "[llm, vision]", "none", ["data.image.min_pixels=401408"]),
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--set", action="append", default=[], help="a spec override for raylora's cases")
    parser.add_argument("--only", choices=[case[0] for case in CASES], help="run this case alone")
    parser.add_argument("--trainer", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--profile", action="store_true", help="print torch.profiler's top ops per case")
    parser.add_argument(
        "--tiny", action="store_true", help="a 2-layer model of the same architecture, to check the script"
    )
    args = parser.parse_args()
    import torch  # after the arguments: --help and a mistyped flag answer at once

    cuda = torch.cuda.is_available()
    name = torch.cuda.get_device_name() if cuda else "cpu"
    peak = next((v for k, v in PEAK_BF16_TFLOPS.items() if k in name), 989.0) * 1e12
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        checkpoint = save_random_checkpoint(
            Path(tmp) / "qwen3-vl-2b-random", "cuda" if cuda else "cpu", args.tiny
        )
        print(f"checkpoint saved in {time.perf_counter() - start:.0f} s", flush=True)
        for label, scope, quant, extra in CASES:
            if args.only and label != args.only:
                continue
            # One case failing (an out-of-memory, a kernel missing for this GPU) must not lose the others.
            try:
                results[label] = run_case(label, scope, quant, extra, checkpoint, args, Path(tmp), cuda, peak)
            except Exception:  # noqa: BLE001 - reported, and the next case runs
                traceback.print_exc()
                results[label] = {"error": traceback.format_exc(limit=1).strip().splitlines()[-1]}
    print(json.dumps({"benchmark": "gpu_check", "device": name, "results": results}), flush=True)


def run_case(label, scope, quant, extra, checkpoint, args, tmp: Path, cuda: bool, peak: float) -> dict:
    start = time.perf_counter()
    case = raylora_case(checkpoint, scope, quant, extra, args, tmp / label.replace(" ", "_"), cuda)
    mfu = 6 * case["params"] * case["tokens_per_s"] / peak
    row = {
        "tokens_per_s": case["tokens_per_s"],
        "mfu": mfu,
        "peak_gib": case["peak_gib"],
        "estimate_gib": case["estimate_gib"],
        "estimate_error": case["estimate_gib"] / case["peak_gib"] - 1,
    }
    if quant == "none" and args.trainer and not extra:
        bare = trainer_case(case["spec"], args.steps)
        row["trainer_tokens_per_s"] = bare["tokens_per_s"]
        row["vs_trainer"] = case["tokens_per_s"] / bare["tokens_per_s"]
    print(
        f"{label:30s} {row['tokens_per_s']:10.0f} tok/s  MFU {mfu:6.1%}  "
        f"peak {row['peak_gib']:.1f} GiB "
        f"(estimate {row['estimate_gib']:.1f}, {row['estimate_error']:+.0%})"
        + (f"  vs Trainer {row['vs_trainer']:.2f}×" if "vs_trainer" in row else "")
        + f"  [{time.perf_counter() - start:.0f} s]",
        flush=True,
    )
    return row


if __name__ == "__main__":
    main()
