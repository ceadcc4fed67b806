"""The optimizer of the draft: AdamW on every parameter, or Muon on the matrices (fc, attention and MLP
projections: orthogonalised momentum updates) with AdamW on the rest (norms, the LM head), as speculators trains
drafts. Each parameter group carries an `lr_scale`: the schedule sets lr = schedule(step) x lr_scale."""

from __future__ import annotations

from typing import Iterable

import torch

OPTIMIZERS = ("adamw", "muon")


def muon_parameter(name: str, parameter: torch.nn.Parameter) -> bool:
    """Muon orthogonalises 2-D updates: the matrices of the draft's layers, not its vocabulary-sized LM head."""
    return parameter.ndim == 2 and min(parameter.shape) > 1 and "lm_head" not in name and "embed" not in name


class MuonWithAdamW:
    """Muon on the matrices, AdamW on the rest, stepped together, with one state dict: the optimizer interface
    the training loop and the checkpoints use."""

    def __init__(self, named: Iterable[tuple[str, torch.nn.Parameter]], lr: float, weight_decay: float,
                 muon_lr_scale: float):
        named = list(named)
        matrices = [p for n, p in named if muon_parameter(n, p)]
        others = [p for n, p in named if not muon_parameter(n, p)]
        self.muon = torch.optim.Muon(matrices, lr=lr * muon_lr_scale, weight_decay=weight_decay,
                                     adjust_lr_fn="match_rms_adamw")
        self.adamw = torch.optim.AdamW(others, lr=lr, weight_decay=weight_decay)
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
                    muon_lr_scale: float = 1.0) -> "torch.optim.Optimizer | MuonWithAdamW":
    named = [(n, p) for n, p in module.named_parameters() if p.requires_grad]
    if kind == "muon":
        return MuonWithAdamW(named, lr, weight_decay, muon_lr_scale)
    return torch.optim.AdamW([p for _, p in named], lr=lr, weight_decay=weight_decay)


def set_learning_rate(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_scale", 1.0)
