"""The metrics every trial reports, named once: what a study may optimize (``study.objective``), what
MLflow keeps a ``best_`` summary of, what the progress lines and the leaderboard show.

Training writes them (:mod:`raylora.train.recipe`, :mod:`raylora.train.cost`); the spec checks objectives
against them, so they live here, below both.
"""

from __future__ import annotations

TRAIN_LOSS = "train/loss"
EVAL_LOSS = "eval/loss"
CLICK_ACC = "eval/click_acc"
FORMAT_ERROR_RATE = "eval/format_error_rate"
TYPE_ACC = "eval/type_acc"
STEP_ACC = "eval/step_acc"

BETTER = {
    EVAL_LOSS: "min",
    CLICK_ACC: "max",
    FORMAT_ERROR_RATE: "min",
    TYPE_ACC: "max",
    STEP_ACC: "max",
    TRAIN_LOSS: "min",
}
"""The quality metrics and the direction that is better (in the order error messages list them)."""

GENERATED = (CLICK_ACC, FORMAT_ERROR_RATE, TYPE_ACC, STEP_ACC)
"""Scored from greedy generation (``training.click_eval_samples`` > 0), see :mod:`raylora.data.scoring`."""

PEAK_MEM_GB = "cost/peak_mem_gb"
ACCELERATOR_HOURS = "cost/accelerator_hours"
TOKENS_PER_S = "cost/tokens_per_s"
TRAINABLE_PARAMS = "cost/trainable_params"
COST = (PEAK_MEM_GB, ACCELERATOR_HOURS, TOKENS_PER_S, TRAINABLE_PARAMS)
"""What a trial costs (:mod:`raylora.train.cost` measures them)."""
CHEAPER = {PEAK_MEM_GB: "min", ACCELERATOR_HOURS: "min", TOKENS_PER_S: "max", TRAINABLE_PARAMS: "min"}
"""Lower is cheaper for all but throughput."""

OBJECTIVES = (*BETTER, *COST)
"""Every metric a study may optimize."""
