"""The reference decoder: greedy speculative decoding over a target and a draft, in plain PyTorch; each drafter
proposes as its engine does (its registry entry's `propose`: a chain in draft/chain.py, one pass from mask slots
in draft/dflash.py and draft/peagle.py).

It is the oracle of the draft model. It runs the draft exactly as a serving engine does (each draft step one
position further on, reading the draft's own output as the next step's hidden state) but recomputes the whole
sequence at every step: slow, simple, and exact. Evaluate uses it as a cross-check of vLLM's counters; tests use
it to prove that the training-time-test unroll computes what the engine will run.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from eagle_recipes.draft.config import DraftConfig
from eagle_recipes.draft.drafters import drafter
from eagle_recipes.draft.target import target_features


@dataclass
class Acceptance:
    """Counts from speculative decoding: drafts (verify steps that carried a draft), accepted per position."""

    drafts: int = 0
    accepted_per_position: list[int] = field(default_factory=list)

    @property
    def accepted(self) -> int:
        return int(sum(self.accepted_per_position))

    @property
    def acceptance_length(self) -> float:
        return 1.0 + self.accepted / self.drafts if self.drafts else 1.0

    @property
    def per_position(self) -> list[float]:
        return [a / self.drafts if self.drafts else 0.0 for a in self.accepted_per_position]

    def add(self, other: "Acceptance") -> None:
        size = max(len(self.accepted_per_position), len(other.accepted_per_position))
        mine = self.accepted_per_position + [0] * (size - len(self.accepted_per_position))
        theirs = other.accepted_per_position + [0] * (size - len(other.accepted_per_position))
        self.accepted_per_position = [a + b for a, b in zip(mine, theirs)]
        self.drafts += other.drafts


def reference_generate(target, draft: torch.nn.Module, config: DraftConfig, d2t: torch.Tensor, prompt_ids: list[int],
                       k: int, max_tokens: int, eos_ids: set[int]) -> tuple[list[int], Acceptance]:
    """Greedy speculative decoding, k drafted tokens per verify step; exact target greedy output by construction."""
    spec = drafter(config.algorithm)
    draft_to_target = torch.arange(config.draft_vocab_size) + d2t if spec.calibrated_vocab else None
    embed, lm_head = target.get_input_embeddings(), target.get_output_embeddings()
    stats = Acceptance(accepted_per_position=[0] * k)
    with torch.no_grad():
        out = target(input_ids=torch.tensor([prompt_ids]), output_hidden_states=True, use_cache=True)
        cache = out.past_key_values
        features = target_features(out.hidden_states, config.algorithm, config.aux_layer_ids)  # [1, n, *] per verified position
        verified = list(prompt_ids)
        bonus = int(out.logits[0, -1].argmax())
        generated: list[int] = []
        while True:
            generated.append(bonus)
            if bonus in eos_ids or len(generated) >= max_tokens:
                break
            drafted = spec.propose(draft, embed, lm_head, features, verified[1:] + [bonus], k, draft_to_target)
            proposals = [int(draft_to_target[t]) for t in drafted] if draft_to_target is not None else drafted
            # verify: one target forward over the bonus and the proposals
            out = target(input_ids=torch.tensor([[bonus] + proposals]), past_key_values=cache,
                         output_hidden_states=True, use_cache=True)
            predictions = out.logits[0].argmax(-1).tolist()
            accepted = 0
            while accepted < k and proposals[accepted] == predictions[accepted]:
                accepted += 1
            stats.drafts += 1
            for position in range(accepted):
                stats.accepted_per_position[position] += 1
            kept = [bonus] + proposals[:accepted]
            for token in proposals[:accepted]:
                generated.append(token)
                if token in eos_ids or len(generated) >= max_tokens:
                    return generated[:max_tokens], stats
            verified += kept
            cache = out.past_key_values
            rejected = cache.get_seq_length() - len(verified)
            if rejected:  # a negative crop removes that many tokens (a positive one is deprecated in transformers 5)
                cache.crop(-rejected)
            features = torch.cat([features, target_features(out.hidden_states, config.algorithm, config.aux_layer_ids)[:, : len(kept)]], dim=1)
            bonus = predictions[accepted]
    return generated[:max_tokens], stats


def simulate_greedy_chain(correct: torch.Tensor, first: int, end: int, stop: int | None = None) -> Acceptance:
    """Acceptance of greedy chain drafting over one sequence whose tokens after the prompt are the target's own
    greedy output. `correct` [k, T]: teacher-forced step correctness (`ttt.step_correctness`); `first`: the
    last prompt position (the first bonus token is x[first + 1]); `end`: the sequence length; `stop`: no verify
    step starts once the sequence reaches this length (generation's max_tokens; default `end`).

    Each verify step starts after verified position t, accepts the leading correct draft steps (m of them) and
    moves to t + m + 1, exactly as the engine does when drafts are compared with the target's greedy tokens."""
    k = correct.shape[0]
    stats = Acceptance(accepted_per_position=[0] * k)
    t, stop = first, end if stop is None else stop
    while t + 2 < stop:  # a bonus token x[t+1] and at least one token after it to draft
        room = min(k, end - t - 2)
        accepted = 0
        while accepted < room and bool(correct[accepted, t]):
            accepted += 1
        stats.drafts += 1
        for position in range(accepted):
            stats.accepted_per_position[position] += 1
        t += accepted + 1
    return stats
