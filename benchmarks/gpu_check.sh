#!/usr/bin/env bash
# Every GPU path on one GPU, in under 8 minutes, on a machine that may have nothing but PyTorch, transformers,
# safetensors, numpy and rich: tiers torch (the training code without Ray, on a random model shaped like
# SmolLM2-135M), ray (Ray Train's NCCL workers) and vllm (synthesis, capture, evaluate in vLLM); a tier whose
# needs are missing prints "skipped: ..." and the check goes on. See benchmarks/gpu_check.py.
# Usage: bash benchmarks/gpu_check.sh [--out DIR] [--tiers torch,ray,vllm]
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -z "${PYTHON:-}" ]; then
  if [ -x .venv/bin/python ]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
exec timeout 480 "$PYTHON" benchmarks/gpu_check.py "$@"
