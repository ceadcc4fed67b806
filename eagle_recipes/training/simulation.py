"""Simulated acceptance while training: every `simulate_every` steps the draft replays greedy chain drafting over
the held-out conversations (the base model's own greedy replies, synthesized at temperature 0), with its
teacher-forced unroll, and counts what an engine would accept (draft/reference.py's `simulate_greedy_chain`,
tested equal to the reference decoder). Each assistant reply is one generation: drafting starts after its prompt
and stops at its end-of-turn token. A user sees acceptance rise while training, not only the loss fall, and the
run can keep the checkpoint with the best simulated tau."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from eagle_recipes.data.sequences import Sequences
from eagle_recipes.draft.drafters import drafter
from eagle_recipes.draft.reference import Acceptance, simulate_greedy_chain
from eagle_recipes.training.batches import collate
from eagle_recipes.training.target_source import TargetSource


def assistant_spans(mask: np.ndarray) -> list[tuple[int, int]]:
    """(first, end) of every run of assistant tokens: one reply each."""
    edges = np.diff(np.concatenate([[0], mask.astype(np.int8), [0]]))
    return list(zip(np.flatnonzero(edges == 1).tolist(), np.flatnonzero(edges == -1).tolist()))


@dataclass
class HeldOut:
    sequences: Sequences
    target: TargetSource  # where their base-model outputs come from (indices into `sequences`)


def simulated_acceptance(draft: torch.nn.Module, held_out: HeldOut, k: int, embed, device,
                         lm_head: torch.nn.Linear | None = None) -> Acceptance:
    """Greedy speculative decoding of k drafted tokens per verify step over every held-out reply."""
    total = Acceptance(accepted_per_position=[0] * k)
    correctness = drafter(draft.config.algorithm).correctness
    held_out.target.expect([index] for index in range(held_out.sequences.count))
    with torch.no_grad():
        for index in range(held_out.sequences.count):
            input_ids, loss_mask, padding = (t.to(device) for t in collate(held_out.sequences, [index], "assistant"))
            outputs = held_out.target.outputs(input_ids, loss_mask, padding, [index])
            correct = correctness(draft, outputs, embed, k, lm_head)[:, 0]
            for first, end in assistant_spans(held_out.sequences.mask_of(index)):
                if first > 0:
                    total.add(simulate_greedy_chain(correct, first - 1, end))
    return total
