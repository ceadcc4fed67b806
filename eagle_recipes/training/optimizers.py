"""The optimizer of the draft: AdamW on every parameter, or Muon on the matrices (fc, attention and MLP
projections: orthogonalised momentum updates) with AdamW on the rest (norms, the LM head), as speculators trains
drafts. Each parameter group carries an `lr_scale`: the schedule sets lr = schedule(step) x lr_scale.

Muon orthogonalises each update with a Newton-Schulz iteration that torch runs in bfloat16, whatever the device.
Where bfloat16 matmuls are emulated (AVX2-only CPUs) that costs ~20x the float32 iteration: 25 s a step for the
quickstart's draft. There the iteration runs in float32 (`Float32Muon`); GPUs and CPUs with native bfloat16 keep
torch's own optimizer.
"""

from __future__ import annotations

from typing import Iterable

import torch
from torch.optim import _muon


def newton_schulz(update: torch.Tensor, coefficients: tuple[float, float, float], steps: int, eps: float,
                  dtype: torch.dtype) -> torch.Tensor:
    """torch's quintic Newton-Schulz orthogonalisation (`torch.optim._muon`), computed in `dtype`."""
    a, b, c = coefficients
    transposed = update.size(0) > update.size(1)
    ortho = (update.T if transposed else update).to(dtype, copy=True)
    ortho.div_(ortho.norm().clamp(min=eps))  # spectral norm at most 1
    for _ in range(steps):
        gram = ortho @ ortho.T
        ortho = torch.addmm(ortho, torch.addmm(gram, gram, gram, beta=b, alpha=c), ortho, beta=a)
    return ortho.T if transposed else ortho


class Float32Muon(torch.optim.Muon):
    """torch's Muon (same hyperparameters, state and checkpoints) with its Newton-Schulz iteration in float32:
    the one step torch does not let a caller choose the dtype of, written out as `_single_tensor_muon` does."""

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            momentum = group["momentum"]
            for param in group["params"]:
                if param.grad is None:
                    continue
                state = self.state[param]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = torch.zeros_like(param.grad, memory_format=torch.preserve_format)
                buffer = state["momentum_buffer"]
                buffer.lerp_(param.grad, 1 - momentum)
                update = param.grad.lerp(buffer, momentum) if group["nesterov"] else buffer
                update = newton_schulz(update, group["ns_coefficients"], group["ns_steps"], group["eps"],
                                       torch.float32).to(param.dtype)
                param.mul_(1 - group["lr"] * group["weight_decay"])
                param.add_(update, alpha=-_muon._adjust_lr(group["lr"], group["adjust_lr_fn"], param.shape))
        return loss


def muon_class(device: torch.device) -> type[torch.optim.Muon]:
    """torch's Muon where bfloat16 is native; the float32 iteration where it is emulated."""
    from eagle_recipes.devices import native_bfloat16

    return torch.optim.Muon if native_bfloat16(device) else Float32Muon


def muon_parameter(name: str, parameter: torch.nn.Parameter) -> bool:
    """Muon orthogonalises 2-D updates: the matrices of the draft's layers, not its vocabulary-sized LM head."""
    return parameter.ndim == 2 and min(parameter.shape) > 1 and "lm_head" not in name and "embed" not in name


class MuonWithAdamW:
    """Muon on the matrices, AdamW on the rest, stepped together, with one state dict: the optimizer interface
    the training loop and the checkpoints use."""

    def __init__(self, named: Iterable[tuple[str, torch.nn.Parameter]], lr: float, weight_decay: float,
                 muon_lr_scale: float, muon: type[torch.optim.Muon] = torch.optim.Muon):
        named = list(named)
        matrices = [p for n, p in named if muon_parameter(n, p)]
        others = [p for n, p in named if not muon_parameter(n, p)]
        self.muon = muon(matrices, lr=lr * muon_lr_scale, weight_decay=weight_decay,
                                     adjust_lr_fn="match_rms_adamw")
        self.adamw = adamw(others, lr, weight_decay)
        self.muon.param_groups[0]["lr_scale"] = muon_lr_scale
        self.param_groups = self.muon.param_groups + self.adamw.param_groups  # what the schedule sets

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.muon.zero_grad(set_to_none)
        self.adamw.zero_grad(set_to_none)

    @torch.no_grad()
    def step(self, closure=None):
        self.muon.step()
        self.adamw.step()

    def state_dict(self) -> dict:
        return {"muon": self.muon.state_dict(), "adamw": self.adamw.state_dict()}

    def load_state_dict(self, state_dict: dict) -> None:
        self.muon.load_state_dict(state_dict["muon"])
        self.adamw.load_state_dict(state_dict["adamw"])
        self.param_groups = self.muon.param_groups + self.adamw.param_groups


def build_optimizer(module: torch.nn.Module, kind: str, lr: float, weight_decay: float,
                    muon_lr_scale: float = 1.0, device: torch.device | None = None
                    ) -> "torch.optim.Optimizer | MuonWithAdamW":
    """AdamW, or Muon with AdamW; Muon's iteration in bfloat16 only where `device` computes it natively."""
    named = [(n, p) for n, p in module.named_parameters() if p.requires_grad]
    if kind == "muon":
        device = device or next(module.parameters()).device
        return MuonWithAdamW(named, lr, weight_decay, muon_lr_scale, muon_class(device))
    return adamw([p for _, p in named], lr, weight_decay)


def adamw(parameters: list[torch.nn.Parameter], lr: float, weight_decay: float) -> torch.optim.AdamW:
    """torch's AdamW, with its fused kernel for plain CPU tensors: one pass over every parameter where the CPU
    default loops tensor by tensor (the quickstart's draft: 4 ms against 18 ms a step on 2 cores, 7% of its step).
    GPUs keep their default (already batched), and FSDP's sharded parameters too."""
    fused = all(p.device.type == "cpu" and type(p.data) is torch.Tensor for p in parameters)
    return torch.optim.AdamW(parameters, lr=lr, weight_decay=weight_decay, fused=fused or None)


def set_learning_rate(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_scale", 1.0)
