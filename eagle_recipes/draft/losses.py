"""Per-position losses of a draft step against the base model's distribution over the draft vocabulary.

- `kl`: cross-entropy against the target's whole distribution (soft labels; equal to KL(p || q) up to the
  target's entropy, which has no gradient): what EAGLE-3 trains with.
- LK losses (arXiv 2602.23881), which train the acceptance itself, alpha = sum_x min(p(x), q(x)) (the probability
  that a draft sampled from q is accepted against p):
  - `tv`: total variation, 1 - alpha;
  - `nla`: -log alpha (alpha floored at 1e-5);
  - `lk_hybrid`: lambda * KL + (1 - lambda) * TV with lambda = exp(-3 alpha) per position (alpha detached): KL
    while the draft is far off, acceptance once it is close (the paper's setting for EAGLE-3).
p is the target's distribution renormalised over the draft vocabulary (as speculators computes it); positions
whose target top token is not a draft token carry no loss anyway (draft/ttt.py). Computed in float32.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

@dataclass
class StepStats:
    loss: float
    correct: int  # counted columns where the draft's top token is the target's top token
    counted: int  # columns whose label is under the loss mask (in the draft vocabulary or not)


LOSSES = ("kl", "tv", "nla", "lk_hybrid")
LK_HYBRID_ETA = 3.0
NLA_FLOOR = 1e-5


def position_losses(logits: torch.Tensor, labels: torch.Tensor, loss: str = "kl") -> torch.Tensor:
    """[..., K] draft logits and target logits over the draft vocabulary -> [...] loss per position."""
    target = torch.softmax(labels.float(), dim=-1)
    log_draft = torch.log_softmax(logits.float(), dim=-1)
    if loss == "kl":
        return -(target * log_draft).sum(-1)
    alpha = torch.minimum(target, log_draft.exp()).sum(-1)
    if loss == "tv":
        return 1.0 - alpha
    if loss == "nla":
        return -torch.log(alpha.clamp(min=NLA_FLOOR))
    if loss == "lk_hybrid":
        weight = torch.exp(-LK_HYBRID_ETA * alpha.detach())
        return weight * -(target * log_draft).sum(-1) + (1.0 - weight) * (1.0 - alpha)
    raise ValueError(f"unknown loss {loss!r}; one of {', '.join(LOSSES)}")
