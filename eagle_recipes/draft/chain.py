"""Chain drafting, as a serving engine runs EAGLE-1 and EAGLE-3: k passes of the draft, each one position further
on, each reading the previous pass's output as its hidden state and its proposal as its token."""

from __future__ import annotations

import torch

from eagle_recipes.draft.model import EagleDraft, TTTCache


def draft_chain(draft: EagleDraft, embed, lm_head, features: torch.Tensor,
                tokens_in: list[int], k: int, draft_to_target: torch.Tensor | None = None,
                forced: list[int] | None = None) -> tuple[list[int], list[torch.Tensor]]:
    """Draft k tokens after a verified prefix; returns (proposals as draft-vocabulary ids, logits of each step).

    `features` [1, n, *]: the target's features of the n verified positions; `tokens_in`: the n tokens that
    follow them (the verified tokens shifted by one, then the bonus token). Step j runs at position n - 1 + j.
    `draft_to_target`: maps a proposal to the target id fed to the next step (None: the same id).
    `forced`: feed these tokens to steps 1.. instead of the draft's own proposals (teacher forcing, for tests).
    """
    hidden_in = draft.first_hidden(features)
    proposals: list[int] = []
    step_logits: list[torch.Tensor] = []
    tokens_in = list(tokens_in)
    for step in range(k):
        positions = torch.arange(len(tokens_in))[None]
        hidden_out = draft.step(embed(torch.tensor([tokens_in])), hidden_in, positions,
                                [TTTCache() for _ in draft.decoder_layers()], None)
        last = hidden_out[:, -1:]
        logits = draft.head(last, lm_head)[0, -1]
        step_logits.append(logits)
        proposals.append(int(logits.argmax()))
        if step + 1 < k:
            if forced is not None:
                token = forced[step]
            else:
                token = int(draft_to_target[proposals[-1]]) if draft_to_target is not None else proposals[-1]
            tokens_in.append(token)
            hidden_in = torch.cat([hidden_in, draft.next_hidden(last)], dim=1)
    return proposals, step_logits


def propose_chain(draft: EagleDraft, embed, lm_head, features: torch.Tensor, tokens_in: list[int], k: int,
                  draft_to_target: torch.Tensor | None = None) -> list[int]:
    """The drafter registry's `propose` for chain drafts."""
    return draft_chain(draft, embed, lm_head, features, tokens_in, k, draft_to_target)[0]
