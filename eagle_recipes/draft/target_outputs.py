"""What one frozen base-model forward gives a drafter's training objective: the same for every feature mode
(online, cached, streamed: training/features/) and read by every drafter."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class TargetOutputs:
    """What one frozen base-model forward gives the draft (no gradients)."""

    input_ids: torch.Tensor  # [B, T]
    loss_mask: torch.Tensor  # [B, T] 1 where a token is a training label (assistant tokens, or every token)
    padding: torch.Tensor  # [B, T] 1 on real tokens
    draft_logits: torch.Tensor  # [B, T, K] target logits restricted to the draft vocabulary
    top_in_draft: torch.Tensor  # [B, T] bool: the target's argmax over its full vocabulary is a draft token
    hidden: torch.Tensor  # EAGLE-3: [B, T, 3H] aux states; EAGLE-1: [B, T, H] final normed states
