#!/usr/bin/env bash
# One command for a single GPU (written for an H200): a Qwen3-VL-2B-shaped model with random weights
# (config only, nothing downloaded), bf16, LoRA scopes [llm] and [llm, vision], and nf4; prints tokens/s,
# model FLOPs utilization, peak memory against `raylora estimate`, and a bare Hugging Face Trainer on the
# same batches for comparison. Run from the repo root after the README's install:
#
#   bash benchmarks/gpu_check.sh            # about 10 minutes on one H200
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
export RAYLORA_HOME=${RAYLORA_HOME:-$(mktemp -d)}
"$PY" benchmarks/gpu_check.py "$@"
