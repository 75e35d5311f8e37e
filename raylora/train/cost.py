"""What a trial costs, measured on its workers and reported with every evaluation.

    cost/peak_mem_gb          the largest peak over the trial's workers: CUDA max allocated on a GPU,
                              peak resident memory (RSS) of the process on CPU
    cost/accelerator_hours    wall time since the trial started × accelerators it holds
                              (GPUs; CPU cores on a CPU-only trial, so CPU-hours)
    cost/tokens_per_s         training tokens (all workers) per second of the trial's wall time
    cost/trainable_params     LoRA parameters the trial trains

A trial restarted from a checkpoint counts its wall time and tokens from the restart on.
"""

from __future__ import annotations

import time

from ..spec.metrics import ACCELERATOR_HOURS, CHEAPER, PEAK_MEM_GB, TOKENS_PER_S, TRAINABLE_PARAMS
from ..spec.metrics import COST as METRICS

__all__ = ["ACCELERATOR_HOURS", "CHEAPER", "METRICS", "PEAK_MEM_GB", "TOKENS_PER_S", "TRAINABLE_PARAMS"]

PREFIX = "cost/"


class Meter:
    """Started with the trial; :meth:`measure` is called at each report (a collective when distributed)."""

    def __init__(self, resources, world_size: int):
        self.start = time.perf_counter()
        self.world_size = world_size
        self.resources = resources
        self.tokens = 0.0

    def add_tokens(self, tokens: float) -> None:
        """Training tokens of all workers since the last call."""
        self.tokens += tokens

    def measure(self, peak_mem_mb: float, trainable_params: int, device, distributed: bool) -> dict:
        """The cost metrics so far; ``peak_mem_mb`` is this worker's own peak."""
        elapsed = max(time.perf_counter() - self.start, 1e-9)
        if distributed:
            peak_mem_mb = _max_over_workers(peak_mem_mb, device)
        # A standalone run (`raylora train`) on a GPU holds one, whatever resources.gpus_per_worker says.
        gpus = self.resources.gpus_per_worker or 1.0
        per_worker = gpus if device.type == "cuda" else self.resources.cpus_per_worker
        return {
            PEAK_MEM_GB: peak_mem_mb / 1024,
            ACCELERATOR_HOURS: elapsed / 3600 * self.world_size * per_worker,
            TOKENS_PER_S: self.tokens / elapsed,
            TRAINABLE_PARAMS: trainable_params,
        }


def _max_over_workers(value: float, device) -> float:
    import torch

    tensor = torch.tensor([value], dtype=torch.float64, device=device)
    torch.distributed.all_reduce(tensor, op=torch.distributed.ReduceOp.MAX)
    return float(tensor.item())
