"""What a drafter declares about itself: the one place the rest of the code asks instead of comparing names."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

# The override fields every drafter built on a Llama-style decoder layer takes (None: the base model's value).
DECODER_LAYER_FIELDS: dict[str, Any] = {
    "num_hidden_layers": 1,
    "intermediate_size": None,
    "num_attention_heads": None,
    "num_key_value_heads": None,
    "head_dim": None,
    "hidden_act": "silu",
    "rms_norm_eps": None,
    "rope_theta": None,
    "rope_scaling": None,
    "max_position_embeddings": None,
}


@dataclass(frozen=True)
class Drafter:
    """One drafter (a `draft.algorithm`): its defaults, what it reads and needs, and how engines serve it."""

    name: str  # the recipe's draft.algorithm
    title: str  # as people write it: "EAGLE-3"
    defaults: dict[str, Any]  # the [draft.overrides] fields it takes, with their defaults
    reads_aux_states: bool  # the base model's aux hidden states (else its final state only)
    calibrated_vocab: bool  # drafts over a calibrated top-K vocabulary (d2t/t2d); else the base model's whole one
    vllm_method: str  # vLLM's speculative_config.method
    sglang_algorithm: str | None  # SGLang's --speculative-algorithm (None: served with vLLM only)
    layout: str | None  # the one export layout it has; None: the recipe's export.layout chooses
    needs_mask_token: bool = False  # drafts from mask slots: the tokenizer's mask token fills them
    vllm_options: dict[str, Any] = field(default_factory=dict)  # more speculative_config keys vLLM needs for it
    trains_by_unroll: bool = True  # trained by the TTT unroll, train.ttt_steps passes (else one pass over blocks)
    starts_from_base_head: bool = False  # train.init_from_target copies the base model's head and norm into its own
    lowest_aux_layer_id: int = 0  # the smallest aux layer id it can read
    step_label: str = "TTT step"  # what a position of its training unroll is called (metrics, plots, the card)
    forced: dict[str, Any] = field(default_factory=dict)  # architecture fields it always sets
    # values -> (recipe key, message, hint) of an architecture it refuses, or None when it takes it
    refuses: Callable[[dict[str, Any]], tuple[str, str, str] | None] = lambda values: None
    # (DraftConfig, train.ttt_steps) -> the k it is trained for (None: any k, a chain drafts on)
    max_draft_tokens: Callable[[Any, int], int | None] = lambda config, ttt_steps: None
    card_lines: Callable[[dict[str, Any]], list[str]] = lambda config: []  # trained draft_config -> model card lines
    # what it is made of, imported when called (those modules need torch; the facts above must not):
    build_model: Callable[[Any], Any] | None = None  # DraftConfig -> its nn.Module
    objective: Callable[[Any, Any], Any] | None = None  # (draft, TrainConfig) -> what one training forward computes
    # (draft, embed, lm_head, features [1, n, *], tokens_in (n), k, draft_to_target) -> k proposals (draft ids),
    # as a serving engine drafts after n verified positions (the reference decoder calls it)
    propose: Callable[..., list[int]] | None = None
    # (draft, TargetOutputs, embed, k, lm_head) -> [k, B, T] bool: after verified position t, draft position j
    # proposes the base model's own top token (teacher forced; the simulation replays greedy decoding with it)
    correctness: Callable[..., Any] | None = None

    def unroll_positions(self, draft_config: Any, ttt_steps: int) -> int:
        """Positions one training forward scores: the unroll's passes, or the mask slots of one block."""
        return ttt_steps if self.trains_by_unroll else self.max_draft_tokens(draft_config, ttt_steps)

    @property
    def captured_as(self) -> str:
        """What a capture for it stores, as fingerprinted: the aux states (named after EAGLE-3, which read them
        first, so captures made before other drafters existed stay valid) or the final state (its own name)."""
        return "eagle3" if self.reads_aux_states else self.name
