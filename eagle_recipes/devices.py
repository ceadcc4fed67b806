"""Where torch work runs and in which precision: the one device policy of training, capture and the engines.

GPUs compute in bfloat16; CPUs in float32, on every kind of CPU: where bfloat16 is not native (AVX2-only CPUs: AMD
Zen 2/3, Intel before Sapphire Rapids) its matmuls are emulated, ~20x slower than float32 (0.74 s against 0.036 s
for Muon's 576 x 1728 Newton-Schulz iteration, benchmarks/optimizer_step.py), and one dtype on every CPU keeps a run's
outputs the same on each. Threads follow the CPUs Ray gave a process, never more.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # planning and the CLI import this module without paying for torch
    import torch


def has_gpu_here() -> bool:
    """Whether this process sees a CUDA device."""
    try:
        import torch

        return torch.cuda.is_available()
    except ImportError:  # pragma: no cover - torch is a dependency
        return False


def torch_threads(cpus: float) -> int:
    """Threads for torch inside a worker: the CPUs Ray gave it, never more (oversubscription is ~8x slower)."""
    return max(1, min(int(cpus), os.cpu_count() or 1))


def worker_device(use_gpu: bool, local_rank: int = 0) -> "torch.device":
    """A training worker's device: its own GPU (by local rank) or the CPU."""
    import torch

    return torch.device("cuda", local_rank) if use_gpu else torch.device("cpu")


def available_device() -> "torch.device":
    """The first GPU when this process has one, else the CPU (capture engines, one per actor)."""
    import torch

    return torch.device("cuda") if has_gpu_here() else torch.device("cpu")


def cpu_capability() -> str:
    """The vector instruction set torch's CPU kernels run with here ("AVX2", "AVX512", ...): every figure names it."""
    import torch

    return torch.backends.cpu.get_cpu_capability()


def native_bfloat16(device: "torch.device") -> bool:
    """Whether bfloat16 matmuls run natively on this device: GPUs, and CPUs with AVX-512 BF16 or AMX (oneDNN's
    own test); elsewhere torch emulates them, ~20x slower than float32."""
    if device.type != "cpu":
        return True
    import torch

    return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def describe_hardware(device: "torch.device") -> str:
    """The device in words, for a benchmark line or a log: the GPU's name, or the CPU capability and bfloat16."""
    import torch

    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU {cpu_capability()}, bfloat16 {'native' if native_bfloat16(device) else 'emulated'}"


def training_precision(precision: str, use_gpu: bool) -> str:
    """train.precision resolved: "auto" is bfloat16 on GPUs, float32 on CPUs; an explicit choice stands."""
    if precision != "auto":
        return precision
    return "bfloat16" if use_gpu else "float32"


def engine_dtype(requested: str, on_gpu: bool) -> str:
    """The dtype an inference engine (vLLM) runs the base model in, by the same policy as `compute_dtype`: the
    recipe's model.dtype when it names one; with "auto", the model's own on GPUs and float32 on every CPU (bfloat16
    is emulated on AVX2-only CPUs, and one dtype everywhere keeps every kind of CPU giving the same tokens)."""
    return requested if requested != "auto" or on_gpu else "float32"


def compute_dtype(device: "torch.device", precision: str = "auto") -> "torch.dtype":
    """The dtype the base model's forward and its features run in: bfloat16 on GPUs unless the run asked for
    float32 (train.precision), float32 on CPUs."""
    import torch

    if precision == "float32" or device.type != "cuda":
        return torch.float32
    return torch.bfloat16
