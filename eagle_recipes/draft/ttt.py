"""The training-time-test unroll and its loss, for one batch of target outputs.

Shapes: B sequences, T positions, H hidden, K draft vocabulary. At unroll step j, column t holds token x[t+j+1]
and predicts x[t+j+2]: its label is the target's distribution at t+j+1, restricted to the draft vocabulary.
A column counts at step j when x[t+j+2] is under the loss mask; it carries loss only when the target's own top
token there is in the draft vocabulary (the draft cannot propose any other), but it is counted in accuracy either
way, so training accuracy is comparable with the acceptance rate an engine measures.

Positions follow inference: a draft chain that starts after verified position t runs its step j at position t + j
(vLLM's proposer advances positions by one per draft step), so step j rotates its queries and keys at t + j. The
attention mask still uses t: the step-0 keys at positions <= t, plus this column's own keys of steps 1..j.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import torch
import torch.nn.functional as F

from eagle_recipes.draft.losses import StepStats, position_losses
from eagle_recipes.draft.model import EagleDraft, TTTCache
from eagle_recipes.draft.target_outputs import TargetOutputs

EAGLE1_CLASSIFICATION_WEIGHT = 0.1  # EAGLE paper: L = L_reg + 0.1 L_cls


@dataclass
class UnrollStep:
    """One step of the unroll: its logits over the draft vocabulary for the columns it ran on."""

    step: int
    columns: torch.Tensor | None  # None: every column; else the original column indices
    logits: torch.Tensor  # [B, C, K]
    hidden: torch.Tensor  # [B, C, H] the draft's output (EAGLE-1: the predicted feature)


def shift_left(x: torch.Tensor, by: int = 1) -> torch.Tensor:
    """x[:, t] <- x[:, t+by], zero-filled at the end."""
    if by == 0:
        return x
    pad = torch.zeros_like(x[:, :by])
    return torch.cat([x[:, by:], pad], dim=1)


def label_columns(target: TargetOutputs, step: int) -> torch.Tensor:
    """[B, T] bool: columns whose step-`step` label x[t+step+2] is a real token under the loss mask."""
    return (shift_left(target.loss_mask, step + 2) * shift_left(target.padding, step + 2)).bool()


def unroll(draft: EagleDraft, target: TargetOutputs, embed: torch.nn.Embedding, steps: int,
           lm_head: torch.nn.Linear | None = None, columns: torch.Tensor | None = None) -> Iterator[UnrollStep]:
    """Run the draft `steps` times. Step 0 runs on every column; later steps on `columns` only (None: all).

    After step 0 a column only talks to its own later steps (and to the fixed step-0 keys), so restricting later
    steps to the columns that carry a label changes nothing for them and saves the rest of the work.
    """
    batch, seq_len = target.input_ids.shape
    positions = torch.arange(seq_len, device=target.input_ids.device)
    caches = [TTTCache() for _ in draft.decoder_layers()]
    hidden = draft.first_hidden(target.hidden)
    for step in range(steps):
        tokens = shift_left(target.input_ids, step + 1)
        query_positions = None
        if step > 0 and columns is not None:
            tokens, query_positions = tokens[:, columns], columns
            if step == 1:
                hidden = hidden[:, columns]
        chain_start = positions if query_positions is None else query_positions
        with torch.no_grad():
            embeds = embed(tokens)
        if step > 0:  # a chain reads the next token and its own last output; a parallel draft its mask slot
            embeds, hidden = draft.later_inputs(embeds, hidden, embed)
        # rotary at t + step (where the engine runs this draft step); the mask keeps using t
        hidden = draft.step(embeds, hidden, (chain_start + step).expand(batch, -1), caches, target.padding,
                            query_positions)
        logits = draft.head(hidden, lm_head)
        yield UnrollStep(step, query_positions, logits, hidden)


def ttt_loss(draft: EagleDraft, target: TargetOutputs, embed: torch.nn.Embedding, steps: int, decay: float,
             lm_head: torch.nn.Linear | None = None, subset: bool = True,
             loss_kind: str = "kl") -> tuple[torch.Tensor, list[StepStats]]:
    """Unroll the draft `steps` times; return the weighted loss and per-step loss/accuracy.

    The loss per position is draft/losses.py's `loss_kind`: by default the cross-entropy against the target's
    whole distribution over the draft vocabulary (soft labels: on the quickstart they gave tau 1.257 where the
    target's top token alone gave 1.239), or an LK loss that trains the acceptance itself.
    `subset=False` runs later steps on every column (for tests: the subset must not change the result)."""
    counted_columns = [label_columns(target, step) for step in range(steps)]
    in_draft = [shift_left(target.top_in_draft, step + 1) for step in range(steps)]
    columns = None
    if subset:
        later = torch.stack(counted_columns[1:]).any(0).any(0) if steps > 1 else \
            torch.zeros(target.input_ids.shape[1], dtype=torch.bool, device=target.input_ids.device)
        columns = later.nonzero().squeeze(-1)
    total = torch.zeros((), device=target.hidden.device)
    stats: list[StepStats] = []
    for out in unroll(draft, target, embed, steps, lm_head, columns):
        step = out.step
        labels = shift_left(target.draft_logits, step + 1)
        counted, trainable = counted_columns[step], counted_columns[step] & in_draft[step]
        if out.columns is not None:
            labels, counted, trainable = labels[:, out.columns], counted[:, out.columns], trainable[:, out.columns]
        per_position = position_losses(out.logits, labels, loss_kind)
        denominator = trainable.sum().clamp(min=1)
        loss = (per_position * trainable).sum() / denominator
        if draft.regresses_features:
            features = shift_left(target.hidden, step + 1)
            features = features[:, out.columns] if out.columns is not None else features
            regression = F.smooth_l1_loss(out.hidden.float(), features.float(), reduction="none").mean(-1)
            loss = (regression * trainable).sum() / denominator + EAGLE1_CLASSIFICATION_WEIGHT * loss
        total = total + (decay ** step) * loss
        correct = int(((out.logits.argmax(-1) == labels.argmax(-1)) & trainable).sum())
        stats.append(StepStats(float(loss.detach()), correct, int(counted.sum())))
    return total, stats


class TTTObjective(torch.nn.Module):
    """The whole unroll as one forward, so DDP/FSDP see a single forward per backward and synchronise
    every draft parameter's gradient."""

    def __init__(self, draft: EagleDraft, steps: int, decay: float, loss_kind: str = "kl"):
        super().__init__()
        self.draft, self.steps, self.decay, self.loss_kind = draft, steps, decay, loss_kind

    def forward(self, target: TargetOutputs, embed: torch.nn.Embedding, lm_head: torch.nn.Linear | None = None,
                draw: int = 0):
        """`draw` (which micro-batch this is) is for objectives that sample; the unroll samples nothing."""
        return ttt_loss(self.draft, target, embed, self.steps, self.decay, lm_head, loss_kind=self.loss_kind)


def step_correctness(draft: EagleDraft, target: TargetOutputs, embed: torch.nn.Embedding, steps: int,
                     lm_head: torch.nn.Linear | None = None) -> torch.Tensor:
    """[steps, B, T] bool: unroll step j at column t proposes the target's own top token x[t+j+2] (teacher
    forced). With the target's greedy continuation as input this is what greedy speculative decoding checks."""
    rows = []
    with torch.no_grad():
        for out in unroll(draft, target, embed, steps, lm_head):
            labels = shift_left(target.draft_logits, out.step + 1)
            in_draft = shift_left(target.top_in_draft, out.step + 1)
            rows.append((out.logits.argmax(-1) == labels.argmax(-1)) & in_draft)
    return torch.stack(rows)
