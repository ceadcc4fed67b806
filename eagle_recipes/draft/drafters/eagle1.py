"""EAGLE-1: one decoder layer over the base model's final hidden state and the token embeddings, predicting
through the base model's own LM head over its whole vocabulary (draft/model.py: Eagle1Draft)."""

from eagle_recipes.draft.drafters.base import DECODER_LAYER_FIELDS, Drafter

EAGLE1 = Drafter(
    name="eagle1", title="EAGLE-1", defaults=dict(DECODER_LAYER_FIELDS),
    reads_aux_states=False, calibrated_vocab=False, vllm_method="eagle", sglang_algorithm="EAGLE", layout="eagle1",
    drafts_through_base_head=True,
)
