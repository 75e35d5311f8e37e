"""The recipe's boundary: what a training run needs from whoever runs it.

:func:`raylora.train.recipe.train` talks to the outside world only through a :class:`Session`:
:class:`LocalSession` here for ``raylora train``, and :class:`raylora.study.pool_worker.PoolSession` on a
Ray Train worker of the study's trial pool.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from enum import StrEnum
from pathlib import Path
from typing import Any, Protocol

from ..layout import METRICS_FILE
from ..spec.metrics import CLICK_ACC, EVAL_LOSS, FORMAT_ERROR_RATE, STEP_ACC, TRAIN_LOSS


class Phase(StrEnum):
    """The start-up phases of a trial's worker group, in order, as the user reads them (each can take tens
    of seconds on a busy node, none of them says anything on its own)."""

    STARTING_WORKERS = "starting workers"
    """Ray starts the group's processes (said by the trial pool, with how many are up)."""
    IMPORTING = "importing"
    """The workers import torch, transformers and PEFT."""
    LOADING_MODEL = "loading the model"
    """The base model is loaded (and quantized), LoRA put on its scopes."""
    INDEXING_DATA = "indexing the data"
    """Each split's records read and their token lengths measured (cached on disk after the first trial)."""
    RESUMING = "resuming from a checkpoint"
    """An interrupted trial's adapter and optimizer state are loaded."""
    FIRST_STEP = "first training step"
    """Data-loader workers start and the first step runs; the step count takes over after it."""


def phase_text(phase: Phase, done: int | None = None, total: int | None = None) -> str:
    """``indexing the data 120/500``: a phase, with how far it is when it counts."""
    return f"{phase} {done}/{total}" if total is not None else str(phase)


def phase_name(text: str) -> str:
    """The phase a :func:`phase_text` names, without its count."""
    return str(text).rstrip("0123456789/ ")


class Session(Protocol):
    """Where a run sits (rank, world, node) and where its results go."""

    rank: int
    """This worker's rank in the run (0 alone)."""
    world_size: int
    """Workers training this trial together (DDP)."""
    local_rank: int
    """This worker's rank on its node: its CUDA device."""
    node: str
    """This worker's node, as reported in the trial's ``nodes``."""

    def latest_checkpoint(self) -> Path | None:
        """A local folder holding the trial's latest checkpoint to resume from, or None to start fresh."""
        ...

    def stop_requested(self, distributed: bool, device: Any) -> bool:
        """Whether the study stopped this trial; asked after every step, the same answer on every rank."""
        ...

    def phase(self, phase: Phase, done: int | None = None, total: int | None = None) -> None:
        """A start-up phase begins, or advances (``done`` of ``total``), so a slow start is never silent.
        Must be cheap: it may be called once per record, and is never waited for."""
        ...

    def progress(self, step: int, max_steps: int, running: dict) -> None:
        """After every optimizer step: where training is (``running``: this rank's latest ``train/loss``
        and ``samples_per_s``). Must be cheap: it is called every step and never waited for."""
        ...

    def report(self, metrics: dict, write_checkpoint: Callable[[Path], None] | None = None) -> None:
        """Take the metrics of an evaluation; ``write_checkpoint(folder)`` writes the matching checkpoint."""
        ...

    def finish(self, write_final: Callable[[Path], None]) -> None:
        """The run trained to the end: ``write_final(folder)`` writes the final adapter."""
        ...


class LocalSession:
    """One process, no Ray: results go to ``output_dir``.

    ``live``: a step bar with the loss on a terminal (default: when standard output is one); otherwise a
    plain progress line every ``environment.progress_every_s()`` seconds between evaluations.
    """

    rank, world_size, local_rank = 0, 1, 0
    node = "local"

    def __init__(self, output_dir: str | Path, log: Callable[[str], None] = print, live: bool | None = None):
        from .. import environment

        self.output_dir = Path(output_dir)
        self.log = log
        self.history: list[dict] = []
        self.live = sys.stdout.isatty() if live is None else live
        self.every_s = environment.progress_every_s()
        self._bar = None
        self._last_line = time.monotonic()
        self._phase: Phase | None = None

    def phase(self, phase: Phase, done: int | None = None, total: int | None = None) -> None:
        """A line when a phase begins; a counting phase again every ``progress_every_s``."""
        now = time.monotonic()
        if phase == self._phase and now - self._last_line < self.every_s:
            return
        self._phase, self._last_line = phase, now
        self.log(phase_text(phase, done, total))

    def progress(self, step: int, max_steps: int, running: dict) -> None:
        if self.live:
            self._advance(step, max_steps, running)
        elif time.monotonic() - self._last_line >= self.every_s:
            self._last_line = time.monotonic()
            self.log(_progress_line({"step": f"{step}/{max_steps}", **running}))

    def latest_checkpoint(self) -> Path | None:
        return None

    def stop_requested(self, distributed: bool, device) -> bool:
        return False

    def report(self, metrics: dict, write_checkpoint: Callable[[Path], None] | None = None) -> None:
        self.history.append(metrics)
        self._last_line = time.monotonic()
        self.log(_progress_line(metrics))

    def finish(self, write_final: Callable[[Path], None]) -> None:
        self.close()
        self.output_dir.mkdir(parents=True, exist_ok=True)
        write_final(self.output_dir)
        summary = dict(self.history[-1]) if self.history else {}
        summary["history"] = self.history
        (self.output_dir / METRICS_FILE).write_text(json.dumps(summary, indent=2) + "\n")

    def close(self) -> None:
        """Take the step bar off the terminal."""
        if self._bar is not None:
            self._bar.stop()
            self._bar = None

    def _advance(self, step: int, max_steps: int, running: dict) -> None:
        if self._bar is None:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            self._bar = Progress(
                TextColumn("training"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("loss {task.fields[loss]}"),
                TextColumn("{task.fields[rate]}"),
                TimeRemainingColumn(),
            )
            self._task = self._bar.add_task("train", total=max_steps, loss="-", rate="")
            self._bar.start()
        loss = running.get("train/loss")
        rate = running.get("samples_per_s")
        self._bar.update(
            self._task,
            completed=step,
            loss=f"{loss:.4g}" if loss is not None else "-",
            rate=f"{rate:.2f} samples/s" if rate else "",
        )


def _progress_line(metrics: dict) -> str:
    keys = (TRAIN_LOSS, EVAL_LOSS, CLICK_ACC, STEP_ACC, FORMAT_ERROR_RATE, "samples_per_s")
    parts = [f"step {metrics['step']}"] + [
        f"{k} {metrics[k]:.4g}" for k in keys if metrics.get(k) is not None
    ]
    return "  ".join(parts)
