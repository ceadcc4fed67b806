"""P-EAGLE: the EAGLE-3 draft proposing k tokens in one pass from mask slots (parallel drafting), trained as the
EAGLE-3 unroll whose later steps read the mask slot; served by vLLM as `eagle3` with `parallel_drafting`
(the model: draft/peagle.py)."""

from typing import Any

from eagle_recipes.draft.drafters.base import DECODER_LAYER_FIELDS, Drafter
from eagle_recipes.draft.drafters.eagle3 import AUX_STATE_FIELDS, ttt_objective, unroll_correctness


def _model(config):
    from eagle_recipes.draft.peagle import PEagleDraft

    return PEagleDraft(config)


def _propose(*args):
    from eagle_recipes.draft.peagle import propose_parallel

    return propose_parallel(*args)


def _card_lines(config: dict[str, Any]) -> list[str]:
    return [f"- one pass drafts every token: k - 1 mask slots (mask token id {config.get('mask_token_id')}) "
            "after the bonus token; vLLM needs `\"parallel_drafting\": true`"]


PEAGLE = Drafter(
    name="peagle", title="P-EAGLE",
    defaults={**DECODER_LAYER_FIELDS, **AUX_STATE_FIELDS,
              "mask_token_id": None},  # None: the tokenizer's mask token, else its last added special token not in chats
    reads_aux_states=True, calibrated_vocab=True, vllm_method="eagle3", sglang_algorithm=None, layout="peagle",
    needs_mask_token=True, vllm_options={"parallel_drafting": True}, starts_from_base_head=True,
    step_label="parallel slot",
    # a mask slot's position is learned per depth: it drafts as many tokens as the unroll trains
    max_draft_tokens=lambda config, ttt_steps: ttt_steps, card_lines=_card_lines,
    build_model=_model, objective=ttt_objective, propose=_propose, correctness=unroll_correctness,
)
