"""The base model's side of a draft: what one forward of the base model gives the draft to read.

One owner for the forward that makes draft features, so that online training, the capture engines and the
reference decoder read the same states: transformers' `hidden_states[k]` is the input of decoder layer k (0 = the
embeddings; vLLM's aux layer id k), `hidden_states[-1]` the final normed state.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from eagle_recipes.draft.drafters import reads_aux_states


def target_features(hidden_states: Sequence[torch.Tensor], algorithm: str, aux_layer_ids) -> torch.Tensor:
    """What the draft reads from one target forward: EAGLE-3 and DFlash the aux states (ascending layer ids, concatenated),
    EAGLE-1 the final normed state. `hidden_states` is transformers' output_hidden_states tuple."""
    if reads_aux_states(algorithm):
        return torch.cat([hidden_states[i] for i in aux_layer_ids], dim=-1)
    return hidden_states[-1]


def pad_sequences(sequences: Sequence[np.ndarray], pad_id: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(input_ids, padding) [B, T] for token sequences of any lengths: right-padded with `pad_id`, padding 1 on
    real tokens."""
    length = max(len(ids) for ids in sequences)
    input_ids = torch.full((len(sequences), length), int(pad_id), dtype=torch.long)
    padding = torch.zeros((len(sequences), length), dtype=torch.long)
    for row, ids in enumerate(sequences):
        input_ids[row, : len(ids)] = torch.from_numpy(np.asarray(ids).astype(np.int64))
        padding[row, : len(ids)] = 1
    return input_ids, padding


@dataclass
class BaseForward:
    """One frozen forward of the base model."""

    hidden: torch.Tensor  # [B, T, F] what the draft reads (target_features)
    final: torch.Tensor  # [B, T, H] the final normed state (the LM head's input)


def base_forward(model, input_ids: torch.Tensor, padding: torch.Tensor, algorithm: str,
                 aux_layer_ids) -> BaseForward:
    """Run a transformers causal LM's decoder (no LM head) and keep what a draft needs."""
    with torch.no_grad():
        out = model.base_model(input_ids=input_ids, attention_mask=padding, output_hidden_states=True)
        return BaseForward(hidden=target_features(out.hidden_states, algorithm, aux_layer_ids),
                           final=out.last_hidden_state)


def top_tokens(lm_head, final: torch.Tensor, chunk: int = 1024) -> torch.Tensor:
    """The base model's top token at every position, scoring `chunk` positions at a time (full-vocabulary logits
    of a whole batch would take tokens x vocabulary x 4 bytes at once)."""
    flat = final.reshape(-1, final.shape[-1])
    top = torch.cat([lm_head(flat[i: i + chunk]).argmax(-1) for i in range(0, flat.shape[0], chunk)])
    return top.reshape(final.shape[:-1])
