"""EAGLE-1: one decoder layer over the base model's final hidden state and the token embeddings, predicting
through the base model's own LM head over its whole vocabulary (draft/model.py: Eagle1Draft)."""

from eagle_recipes.draft.drafters.base import DECODER_LAYER_FIELDS, Drafter
from eagle_recipes.draft.drafters.eagle3 import propose_chain, ttt_objective, unroll_correctness


def _model(config):
    from eagle_recipes.draft.model import Eagle1Draft

    return Eagle1Draft(config)


EAGLE1 = Drafter(
    name="eagle1", title="EAGLE-1", defaults=dict(DECODER_LAYER_FIELDS),
    reads_aux_states=False, calibrated_vocab=False, vllm_method="eagle", sglang_algorithm="EAGLE", layout="eagle1",
    build_model=_model, objective=ttt_objective, propose=propose_chain, correctness=unroll_correctness,
)
