"""The training-time-test unroll and its loss, for one batch of target outputs.

Shapes: B sequences, T positions, H hidden, K draft vocabulary. At unroll step j, position t holds token
x[t+j+1] and predicts x[t+j+2]: its label is the target's distribution at t+j+1, restricted to the draft
vocabulary, weighted in only where that token is under the assistant loss mask and the target's own top
token is in the draft vocabulary.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from eagle_recipes.draft.model import Eagle1Draft, Eagle3Draft, EagleDraft, TTTCache

EAGLE1_CLASSIFICATION_WEIGHT = 0.1  # EAGLE paper: L = L_reg + 0.1 L_cls


@dataclass
class TargetOutputs:
    """What one frozen base-model forward gives the draft (no gradients)."""

    input_ids: torch.Tensor  # [B, T]
    loss_mask: torch.Tensor  # [B, T] 1 on assistant tokens
    padding: torch.Tensor  # [B, T] 1 on real tokens
    draft_logits: torch.Tensor  # [B, T, K] target logits restricted to the draft vocabulary
    top_in_draft: torch.Tensor  # [B, T] bool: the target's argmax is in the draft vocabulary
    hidden: torch.Tensor  # EAGLE-3: [B, T, 3H] aux states; EAGLE-1: [B, T, H] final normed states


@dataclass
class StepStats:
    loss: float
    correct: int
    counted: int


def shift_left(x: torch.Tensor, by: int = 1) -> torch.Tensor:
    """x[:, t] <- x[:, t+by], zero-filled at the end."""
    if by == 0:
        return x
    pad = torch.zeros_like(x[:, :by])
    return torch.cat([x[:, by:], pad], dim=1)


def ttt_loss(draft: EagleDraft, target: TargetOutputs, embed: torch.nn.Embedding, steps: int, decay: float,
             lm_head: torch.nn.Linear | None = None, subset: bool = True) -> tuple[torch.Tensor, list[StepStats]]:
    """Unroll the draft `steps` times; return the weighted loss and per-step loss/accuracy.

    After step 0 a position only talks to its own later steps (and to the fixed step-0 keys), so steps >= 1 run
    on just the columns that carry a loss at some later step: the same result for less work.
    """
    batch, seq_len = target.input_ids.shape
    positions = torch.arange(seq_len, device=target.input_ids.device)
    caches = [TTTCache() for _ in draft.decoder_layers()]
    is_eagle3 = isinstance(draft, Eagle3Draft)
    hidden = draft.fuse(target.hidden) if is_eagle3 else target.hidden
    weights = []
    for step in range(steps):
        weight = (shift_left(target.loss_mask, step + 2) * shift_left(target.padding, step + 2)).bool()
        weights.append(weight & shift_left(target.top_in_draft, step + 1))
    later = torch.stack(weights[1:]).any(0).any(0) if steps > 1 else torch.zeros(seq_len, dtype=torch.bool)
    if not subset:  # every column (for tests: the subset must not change the result)
        later = torch.ones(seq_len, dtype=torch.bool)
    columns = later.nonzero().squeeze(-1)
    total = torch.zeros((), device=hidden.device)
    stats: list[StepStats] = []
    for step in range(steps):
        tokens = shift_left(target.input_ids, step + 1)
        labels = shift_left(target.draft_logits, step + 1)
        weight = weights[step]
        features = shift_left(target.hidden, step + 1) if not is_eagle3 else None
        query_positions = None
        if step > 0:
            tokens, labels, weight = tokens[:, columns], labels[:, columns], weight[:, columns]
            features = features[:, columns] if features is not None else None
            query_positions = columns
        if step == 1:
            hidden = hidden[:, columns]
        step_positions = (positions if query_positions is None else query_positions).expand(batch, -1)
        with torch.no_grad():
            embeds = embed(tokens)
        hidden = draft.step(embeds, hidden, step_positions, caches, target.padding, query_positions)
        logits = draft.logits(hidden) if is_eagle3 else lm_head(hidden)
        counted = int(weight.sum())
        probs = torch.softmax(labels.float(), dim=-1)
        cross_entropy = -(probs * torch.log_softmax(logits.float(), dim=-1)).sum(-1)
        denominator = weight.sum().clamp(min=1)
        loss = (cross_entropy * weight).sum() / denominator
        if isinstance(draft, Eagle1Draft):
            regression = F.smooth_l1_loss(hidden.float(), features.float(), reduction="none").mean(-1)
            loss = (regression * weight).sum() / denominator + EAGLE1_CLASSIFICATION_WEIGHT * loss
        total = total + (decay ** step) * loss
        correct = int(((logits.argmax(-1) == labels.argmax(-1)) & weight).sum())
        stats.append(StepStats(float(loss.detach()), correct, counted))
    return total, stats


class TTTObjective(torch.nn.Module):
    """The whole unroll as one forward, so DDP/FSDP see a single forward per backward and synchronise
    every draft parameter's gradient."""

    def __init__(self, draft: EagleDraft, steps: int, decay: float):
        super().__init__()
        self.draft, self.steps, self.decay = draft, steps, decay

    def forward(self, target: TargetOutputs, embed: torch.nn.Embedding, lm_head: torch.nn.Linear | None = None):
        return ttt_loss(self.draft, target, embed, self.steps, self.decay, lm_head)
