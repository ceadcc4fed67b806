"""Where torch work runs and in which precision: the one device policy of training, capture and the engines.

GPUs compute in bfloat16; CPUs in float32 (without AVX-512 BF16 support bfloat16 runs ~5x slower, measured on
this project's 2-core machines). Threads follow the CPUs Ray gave a process, never more.
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


def compute_dtype(device: "torch.device") -> "torch.dtype":
    """bfloat16 on GPUs, float32 on CPUs."""
    import torch

    return torch.bfloat16 if device.type == "cuda" else torch.float32
