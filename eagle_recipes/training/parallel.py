"""How the training objective is spread over workers: DDP (every worker holds the whole draft) or FSDP (shards
it), and the gradient clipping each needs."""

from __future__ import annotations

import torch


def wrap_objective(objective: torch.nn.Module, strategy: str, world: int, device: torch.device) -> torch.nn.Module:
    """The objective as the optimizer steps it: FSDP-wrapped, DDP-wrapped (several workers), or as it is."""
    if strategy == "fsdp":  # GPUs only (validated): torch's FSDP1 does not run on CPU/gloo; one GPU runs it too
        from torch.distributed.fsdp import FullyShardedDataParallel

        return FullyShardedDataParallel(objective, use_orig_params=True, device_id=device)
    if world > 1:
        from torch.nn.parallel import DistributedDataParallel

        return DistributedDataParallel(objective, device_ids=[device.index] if device.type == "cuda" else None)
    return objective


def clip_gradients(wrapped: torch.nn.Module, draft: torch.nn.Module, strategy: str, max_norm: float) -> float:
    """Clip to `max_norm` and return the norm before clipping (FSDP shards the gradients: only its own method sees
    the whole norm)."""
    if strategy == "fsdp":
        return float(wrapped.clip_grad_norm_(max_norm))
    return float(torch.nn.utils.clip_grad_norm_(draft.parameters(), max_norm))
