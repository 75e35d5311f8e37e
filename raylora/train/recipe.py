"""The training recipe: what each Ray Train worker runs, top to bottom (and ``raylora train`` standalone).

    setup → model → data → optimizer → resume → loop (train, check gradients, evaluate, report) → finish

The recipe talks to the outside world only through a :class:`~raylora.train.session.Session`:
:class:`~raylora.train.session.LocalSession` for a standalone run that writes ``adapter/``,
``metrics.json`` and ``targets.json`` to a folder, and :class:`raylora.study.pool_worker.PoolSession`
inside a Ray Train worker, which reports metrics and adapter-only checkpoints to the study's trial pool.
"""

from __future__ import annotations

import functools
import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ..data import scoring, templates
from ..errors import TrialError
from ..layout import ADAPTER, EVAL_ITEMS, STATE_FILE, TARGETS
from ..spec import Spec
from . import cost, encode, evaluate, faults, init_adapter, loader
from . import model as model_lib
from .session import Phase, Session
from .sharding import gather_state, is_sharded, load_state

# -- the recipe --------------------------------------------------------------------------------------


@dataclass
class TrainResult:
    """What a finished run leaves in memory: its last reported metrics and the trained PEFT model."""

    metrics: dict
    model: object


def train(spec: Spec, session: Session) -> TrainResult:
    """Train one trial's LoRA adapter as the (concrete) ``spec`` says, talking to ``session``."""
    import torch

    from .. import builtin, environment

    training = spec.training

    # -- setup
    device = _device(session)
    torch.manual_seed(training.seed)
    distributed = session.world_size > 1 and torch.distributed.is_initialized()
    meter = cost.Meter(spec.resources, session.world_size)

    nodes = _gather(session.node, distributed)

    # -- model
    session.phase(Phase.LOADING_MODEL)
    path = builtin.resolve_model(spec.model.name_or_path)
    built = model_lib.build(spec, path, device)
    peft_model, processor = built.model, built.processor
    trainable = model_lib.trainable_by_part(peft_model, built.model_type)
    targets = _resolved_targets(spec, built, trainable)
    if training.init_adapter:  # a later stage: modules the earlier adapter has start from its weights
        start = init_adapter.resolve(training.init_adapter, spec.study.storage)
        targets["init_adapter"] = {"path": start, **init_adapter.load_into(peft_model, start)}
    sharded = is_sharded(spec)  # FSDP: build() sharded the model across the workers already
    net = (
        torch.nn.parallel.DistributedDataParallel(
            peft_model, device_ids=[device.index] if device.type == "cuda" else None
        )
        if distributed and not sharded
        else peft_model
    )

    # -- data: records and their token lengths now; screenshots decoded lazily, batch by batch
    reading = spec.data.reading()
    image_kw = encode.image_kwargs(spec.data.image.min_pixels, spec.data.image.max_pixels, processor)
    index = environment.home() / "cache" / "lengths"
    session.phase(Phase.INDEXING_DATA)
    indexed = functools.partial(session.phase, Phase.INDEXING_DATA)  # (done, total) per record measured
    train_set = loader.open_split(
        builtin.resolve_data(spec.data.train, "train"),
        processor,
        spec.data.max_length,
        image_kw,
        cache_dir=index,
        on_indexed=indexed,
        **reading,
    )
    if not train_set.records:
        raise TrialError(
            f"every training sample is longer than data.max_length={spec.data.max_length} tokens"
        )
    eval_set = None
    if spec.data.eval:
        eval_set = loader.open_split(
            builtin.resolve_data(spec.data.eval, "eval"),
            processor,
            spec.data.max_length,
            image_kw,
            cache_dir=index,
            on_indexed=indexed,
            **reading,
        )
    pad_id = processor.tokenizer.pad_token_id

    # -- optimizer and schedule
    groups = model_lib.param_groups(peft_model, built.model_type, spec)
    optimizer = torch.optim.AdamW(groups, betas=(0.9, 0.999), eps=1e-8)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _schedule(training))

    # -- resume from the latest adapter checkpoint, if Ray restarted this trial
    step = resumed_from = 0
    resume = session.latest_checkpoint()
    if resume is not None:
        session.phase(Phase.RESUMING)
        step = resumed_from = _load_checkpoint(resume, peft_model, optimizer, scheduler, sharded)
    batches = loader.batches(
        train_set,
        training.per_device_train_batch_size,
        pad_id,
        training.seed,
        rank=session.rank,
        world=session.world_size,
        skip=step * training.gradient_accumulation_steps,  # where the resumed run's data order stands
        workers=loader.workers(spec),
    )

    # -- loop
    session.phase(Phase.FIRST_STEP)
    faults.maybe_oom(spec)
    net.train()
    window = _Window()
    metrics: dict = {}
    final_items: list[dict | None] = [None]

    def report() -> dict:
        meter.add_tokens(window.tokens * session.world_size)
        out = {"step": step, **window.flush(session.world_size, distributed, device)}
        out.update({f"lr/{g['name']}": g["lr"] for g in optimizer.param_groups if "/" not in g["name"]})
        final = step >= training.max_steps
        scored: dict = {}  # the final evaluation's outcome per record, saved as eval_items.json
        out.update(
            _evaluate(
                spec, peft_model, eval_set, processor, image_kw, session, device, distributed, final, scored
            )
        )
        final_items[0] = scored or None
        for goal in spec.study.goals:  # every rank holds the same reduced values: all raise, or none
            if goal.metric in out and not math.isfinite(out[goal.metric]):
                raise TrialError(f"the objective {goal.metric} became {out[goal.metric]} at step {step}")
        out["data/dropped_too_long"] = train_set.dropped_too_long
        out["peak_mem_mb"] = _peak_memory_mb(device)
        out.update(meter.measure(out["peak_mem_mb"], targets["trainable_total"], device, distributed))
        out["nodes"] = nodes
        if resumed_from:
            out["resumed_from_step"] = resumed_from
        at = step
        gathered = gather_state(peft_model, optimizer) if sharded else None  # FSDP: every rank takes part
        kept = final_items[0]
        session.report(
            out, lambda d: _save_checkpoint(d, peft_model, optimizer, scheduler, at, targets, gathered, kept)
        )
        window.restart()
        return out

    while step < training.max_steps:
        losses = []
        for _ in range(training.gradient_accumulation_steps):
            batch = {k: v.to(device, non_blocking=True) for k, v in next(batches).items()}
            loss = net(**batch, use_cache=False).loss
            (loss / training.gradient_accumulation_steps).backward()
            losses.append(float(loss.detach()))
            window.add(losses[-1], len(batch["input_ids"]), int(batch["attention_mask"].sum()))
        bad = _non_finite(losses, distributed, device)
        if bad:  # before the optimizer step: the last checkpoint stays the last good adapter
            raise TrialError(f"loss became {bad} at step {step + 1}")
        if step == 0:
            model_lib.check_gradients(peft_model, built.model_type, built.resolution)
        if training.max_grad_norm:
            torch.nn.utils.clip_grad_norm_([p for g in groups for p in g["params"]], training.max_grad_norm)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        step += 1
        session.progress(step, training.max_steps, window.running())
        if step % training.eval_every == 0 or step == training.max_steps:
            metrics = report()
        if session.stop_requested(distributed, device):
            return TrainResult(metrics, peft_model)  # stopped early by the scheduler; nothing more to report
    if not metrics:
        # Restarted from a checkpoint at the last step (the run ended before its driver heard): say where
        # the trial stands again, so the study records it as finished rather than as stopped early.
        metrics = report()

    # -- finish
    adapter = gather_state(peft_model, optimizer)[0] if sharded else None
    session.finish(lambda d: _save_final(d, peft_model, targets, adapter, final_items[0]))
    return TrainResult(metrics, peft_model)


def _device(session):
    import torch

    if torch.cuda.is_available():
        return torch.device("cuda", session.local_rank)
    return torch.device("cpu")


def _schedule(training) -> Callable[[int], float]:
    warmup, total, kind = training.warmup_steps, training.max_steps, training.lr_scheduler

    def factor(step: int) -> float:
        if warmup and step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total - warmup)
        if kind == "linear":
            return max(0.0, 1.0 - progress)
        if kind == "cosine":
            return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
        return 1.0

    return factor


_clock = time.perf_counter  # the throughput window's (a test moves it on during an evaluation)


class _Window:
    """Training loss and throughput since the last report. Its clock runs while the model trains: a report
    restarts it once its evaluation and checkpoint are done (they are not training throughput)."""

    def __init__(self):
        self.start = _clock()
        self.losses: list[float] = []
        self.samples = self.tokens = 0

    def restart(self) -> None:
        """Count from now: a report's evaluation and checkpoint just ended."""
        self.start = _clock()

    def add(self, loss: float, samples: int, tokens: int) -> None:
        self.losses.append(loss)
        self.samples += samples
        self.tokens += tokens

    def running(self) -> dict:
        """This rank's loss and throughput since the last report, for live progress (no collective)."""
        elapsed = max(_clock() - self.start, 1e-9)
        if not self.losses:
            return {}
        return {"train/loss": self.losses[-1], "samples_per_s": self.samples / elapsed}

    def flush(self, world_size: int, distributed: bool, device) -> dict:
        elapsed = max(_clock() - self.start, 1e-9)
        if not self.losses:
            return {}
        loss = sum(self.losses) / len(self.losses)
        if distributed:
            loss = _all_reduce([loss], device)[0] / world_size
        out = {
            "train/loss": loss,
            "samples_per_s": self.samples * world_size / elapsed,
            "tokens_per_s": self.tokens * world_size / elapsed,
        }
        self.__init__()
        return out


def _evaluate(
    spec: Spec,
    peft_model,
    eval_set,
    processor,
    image_kw,
    session,
    device,
    distributed,
    final: bool = False,
    per_record: dict | None = None,
) -> dict:
    """``eval/loss`` and the GUI-agent metrics of :mod:`.scoring` (``eval/click_acc``,
    ``eval/format_error_rate``, ``eval/type_acc``/``eval/step_acc`` with navigation records).

    An intermediate evaluation takes the first ``data.eval_samples`` records for the loss and the first
    ``training.click_eval_samples`` of those for generation; the final one (``final``) the whole eval set
    for both. ``training.click_eval_samples: 0`` turns generation off. At the final evaluation
    ``per_record`` (when given) receives every rank's outcome per record (:func:`.scoring.by_record`).
    """
    if eval_set is None or not eval_set.items:
        return {}
    # Under FSDP every forward is a collective: each rank evaluates every record, decoding in lockstep.
    sharded = distributed and spec.resources.sharding == "fsdp"
    rank, world = (0, 1) if sharded else (session.rank, session.world_size)
    bound = None if final else spec.data.eval_samples
    items = eval_set.items[:bound][rank::world]
    total, count = evaluate.eval_loss(
        peft_model, items, spec.training.per_device_eval_batch_size, processor.tokenizer.pad_token_id, device
    )
    generated = spec.training.click_eval_samples
    records = eval_set.records[:bound] if final or not generated else eval_set.records[:bound][:generated]
    convention = templates.get(spec.data.template).answer_convention(spec.data.coordinates)
    results = (
        evaluate.outcomes(
            peft_model,
            records[rank::world],
            processor,
            image_kw,
            convention,
            spec.training.max_new_tokens,
            spec.training.per_device_eval_batch_size,
            device,
        )
        if generated
        else []
    )
    if final and generated and per_record is not None:
        mine = scoring.by_record(records[rank::world], results)
        if distributed and not sharded:  # under FSDP every rank scored every record already
            import torch

            everyone: list = [None] * session.world_size
            torch.distributed.all_gather_object(everyone, mine)
            mine = {k: v for part in everyone for k, v in part.items()}
        per_record.update(mine)
    totals = [total, count, *scoring.counts(results)]
    if distributed and not sharded:
        totals = _all_reduce(totals, device)
    out = {"eval/loss": totals[0] / max(totals[1], 1.0), **scoring.rates(totals[2:], prefix="eval/")}
    for metric in (goal.metric for goal in spec.study.goals):
        if metric.startswith("eval/") and metric not in out:
            kind = "navigation records (an action reference)" if metric in _NAVIGATION else "click records"
            raise TrialError(
                f"the objective {metric} needs {kind} among the {len(records)} records evaluated"
            )
    return out


_NAVIGATION = ("eval/type_acc", "eval/step_acc")


def _gather(node: str, distributed: bool) -> list[str]:
    """The distinct nodes this run's workers are on."""
    if not distributed:
        return [node]
    import torch

    everyone: list = [None] * torch.distributed.get_world_size()
    torch.distributed.all_gather_object(everyone, node)
    return sorted(set(everyone))


def _all_reduce(values: list[float], device) -> list[float]:
    import torch

    tensor = torch.tensor(values, dtype=torch.float64, device=device)
    torch.distributed.all_reduce(tensor)
    return tensor.tolist()


def _non_finite(losses: list[float], distributed: bool, device) -> str | None:
    """ "NaN" or "inf" when this step's loss is not finite on some rank, else None; every rank gets the same
    answer, so all of them stop together rather than one leaving the others in a collective."""
    flag = max((2.0 if math.isnan(x) else 1.0 for x in losses if not math.isfinite(x)), default=0.0)
    if distributed:
        import torch

        tensor = torch.tensor([flag], dtype=torch.float64, device=device)
        torch.distributed.all_reduce(tensor, op=torch.distributed.ReduceOp.MAX)
        flag = float(tensor.item())
    return {0.0: None, 1.0: "inf"}.get(flag, "NaN")


def _peak_memory_mb(device) -> float:
    import torch

    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    import resource

    # The process's peak resident memory since this trial began (the pool resets it between trials).
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _resolved_targets(spec: Spec, built, trainable: dict[str, int]) -> dict:
    return {
        "model": spec.model.name_or_path,
        "model_type": built.model_type,
        "scope": spec.training.lora.scope if spec.training.lora.target_modules is None else None,
        "target_modules": spec.training.lora.target_modules,
        "modules": built.resolution.by_part(),
        "trainable_params": trainable,
        "trainable_total": sum(trainable.values()),
    }


def _save_final(
    directory: Path, peft_model, targets: dict, adapter: dict | None = None, items: dict | None = None
) -> None:
    # Under FSDP ``adapter`` holds the LoRA weights rank 0 gathered; otherwise PEFT reads the model's own.
    peft_model.save_pretrained(directory / ADAPTER, safe_serialization=True, state_dict=adapter)
    (directory / TARGETS).write_text(json.dumps(targets, indent=2) + "\n")
    if items is not None:  # the final evaluation's outcome per record: the paired test against the base
        (directory / EVAL_ITEMS).write_text(json.dumps(items) + "\n")


def _save_checkpoint(
    directory: Path, peft_model, optimizer, scheduler, step: int, targets: dict, gathered=None, items=None
) -> None:
    import torch

    adapter, optimizer_state = gathered or (None, optimizer.state_dict())
    _save_final(directory, peft_model, targets, adapter, items)
    state = {"step": step, "optimizer": optimizer_state, "scheduler": scheduler.state_dict()}
    torch.save(state, directory / STATE_FILE)


def _load_checkpoint(directory: Path, peft_model, optimizer, scheduler, sharded: bool = False) -> int:
    import torch
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    weights = load_file(str(directory / ADAPTER / "adapter_model.safetensors"))
    state = torch.load(directory / STATE_FILE, weights_only=True)
    if sharded:
        load_state(peft_model, optimizer, weights, state["optimizer"])
    else:
        set_peft_model_state_dict(peft_model, weights)
        optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    # The folder is the session's: on local storage it is the trial's real checkpoint (its adapter may be
    # the trial's best, and other ranks read it too); a downloaded copy is removed by the session.
    return int(state["step"])
