#!/usr/bin/env bash
# One command for a single GPU (written for an H200): a Qwen3-VL-2B-shaped model with random weights
# (config only, nothing downloaded), bf16, LoRA scopes [llm] and [llm, vision] (also at max_pixels), and nf4; prints tokens/s,
# model FLOPs utilization, peak memory against `raylora estimate`, and a bare Hugging Face Trainer on the
# same batches for comparison. Run from the repo root after the README's install:
#
#   bash benchmarks/gpu_check.sh            # about 4 minutes on one H200 (2026-12-04)
#   bash benchmarks/gpu_check.sh --tiny     # the same script on a 2-layer model, on a CPU, in 20 s
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
export RAYLORA_HOME=${RAYLORA_HOME:-$(mktemp -d)}
"$PY" benchmarks/gpu_check.py "$@"
