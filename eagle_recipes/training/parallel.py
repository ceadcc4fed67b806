"""How the training objective is spread over workers, and the gradient clipping that goes with it.

- ddp: every worker holds the whole draft; DistributedDataParallel averages the gradients (one worker: no wrapper,
  as there is nothing to average).
- fsdp: FSDP2 (`fully_shard`, the API PyTorch develops): each decoder layer and then the whole objective are
  sharded over the workers (parameters, gradients and optimizer state), gathered for each forward. It runs with
  NCCL on GPUs and with gloo on CPUs (tests/test_fsdp.py checks it against DDP on two CPU workers).
Parameters stay float32 either way; bfloat16 compute is autocast (loop.py), so both strategies train the same math.
"""

from __future__ import annotations

import torch


def ddp(objective: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(objective, device_ids=[device.index] if device.type == "cuda" else None)


def fsdp(objective: torch.nn.Module, device: torch.device, world: int) -> torch.nn.Module:
    """Shard each decoder layer of the objective's draft, then the rest (fc, norm, LM head) with the objective."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    mesh = init_device_mesh(device.type, (world,))
    for layer in objective.draft.decoder_layers():
        fully_shard(layer, mesh=mesh)
    fully_shard(objective, mesh=mesh)
    return objective


def wrap_objective(objective: torch.nn.Module, strategy: str, world: int, device: torch.device) -> torch.nn.Module:
    """The objective as the optimizer steps it: sharded (fsdp), DDP-wrapped (several workers), or as it is."""
    if strategy == "fsdp":
        return fsdp(objective, device, world)
    if world > 1:
        return ddp(objective, device)
    return objective


def clip_gradients(draft: torch.nn.Module, max_norm: float) -> float:
    """Clip the draft's gradient norm to `max_norm`; returns the norm before clipping. Under FSDP the gradients
    are sharded tensors: their norm is reduced over the workers and read back whole."""
    norm = torch.nn.utils.clip_grad_norm_(draft.parameters(), max_norm)
    return float(norm.full_tensor() if hasattr(norm, "full_tensor") else norm)
