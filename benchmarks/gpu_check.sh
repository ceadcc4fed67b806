#!/usr/bin/env bash
# Every GPU path on one GPU, in under 8 minutes, on SmolLM2-135M-Instruct: synthesis (vLLM), capture with vLLM's
# extractor and with transformers (and the largest difference between them), online and cached training in bf16
# under DDP and under FSDP, export, evaluate. One line per path: tokens/s and peak GPU memory.
#
# Needs the project installed for GPUs (`EXTRA=gpu make install`: vLLM, Ray) and the model in the cache
# (`make quickstart` once, or any run that fetched it). Usage: bash benchmarks/gpu_check.sh [OUT_DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-.venv/bin/python}
exec timeout 480 "$PYTHON" benchmarks/gpu_check.py "${1:-runs/gpu-check}"
