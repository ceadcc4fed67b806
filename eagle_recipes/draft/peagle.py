"""P-EAGLE: an EAGLE-3 draft that proposes k tokens in one pass (parallel drafting), as vLLM serves it with
`"method": "eagle3", "parallel_drafting": true`.

After n verified positions the engine runs one forward over the usual EAGLE-3 inputs (each verified position's
fused aux states with the token after it, the bonus token last, at position n - 1) followed by k - 1 mask slots at
positions n .. n + k - 2. A mask slot reads the embedding of the mask token (`ptd_token_id`) and the fused
`mask_hidden`, a learned vector in the aux states' space (vLLM projects it once through the same norms and fc);
attention is causal over all of it. Slot j proposes the token j + 1 after the bonus.

Trained as the EAGLE-3 unroll whose steps j >= 1 read the mask slot instead of the previous step's token and
output: step j at column t rotates at t + j and sees the step-0 keys up to t and its own steps 1..j, which is the
causal attention of that one pass (tests/test_peagle.py checks the two are equal).
"""

from __future__ import annotations

import torch
from torch import nn

from eagle_recipes.draft.config import DraftConfig
from eagle_recipes.draft.model import Eagle3Draft, TTTCache


class PEagleDraft(Eagle3Draft):
    def __init__(self, config: DraftConfig):
        super().__init__(config)
        width = len(config.aux_layer_ids) * config.hidden_size
        # as the peers initialise it (speculators, SpecForge): a random point of the aux states' space, learned
        self.mask_hidden = nn.Parameter(torch.randn(1, width) * 0.02)

    def mask_state(self) -> torch.Tensor:
        """[1, H]: what a mask slot reads as its hidden state (mask_hidden through the fc, as vLLM fuses it)."""
        return self.fuse(self.mask_hidden)

    def later_inputs(self, embeds: torch.Tensor, hidden: torch.Tensor,
                     embed: nn.Embedding) -> tuple[torch.Tensor, torch.Tensor]:
        mask = torch.full(embeds.shape[:-1], self.config.mask_token_id, dtype=torch.long, device=embeds.device)
        with torch.no_grad():
            mask_embeds = embed(mask)
        return mask_embeds, self.mask_state().to(hidden.dtype).expand_as(hidden)


def parallel_logits(draft: PEagleDraft, embed: nn.Embedding, lm_head, features: torch.Tensor,
                    tokens_in: list[int], k: int) -> torch.Tensor:
    """[k, K] logits of the one pass after n verified positions: `features` [1, n, F] their aux states,
    `tokens_in` the n tokens after them (the bonus token last), then k - 1 mask slots."""
    n = len(tokens_in)
    tokens = torch.tensor([list(tokens_in) + [draft.config.mask_token_id] * (k - 1)])
    hidden = torch.cat([draft.first_hidden(features), draft.mask_state()[None].expand(1, k - 1, -1)], dim=1)
    out = draft.step(embed(tokens), hidden, torch.arange(n + k - 1)[None],
                     [TTTCache() for _ in draft.decoder_layers()], None)
    return draft.head(out[:, n - 1:], lm_head)[0]


def propose_parallel(draft: PEagleDraft, embed: nn.Embedding, lm_head, features: torch.Tensor,
                     tokens_in: list[int], k: int, draft_to_target=None) -> list[int]:
    """The drafter registry's `propose`: k proposals (draft ids) from one pass."""
    return parallel_logits(draft, embed, lm_head, features, tokens_in, k).argmax(-1).tolist()
