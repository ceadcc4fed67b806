"""EAGLE-3: one decoder layer over the fused aux hidden states of three base-model layers, trained with a
test-time-training unroll, drafting over a calibrated vocabulary (draft/model.py: Eagle3Draft)."""

from eagle_recipes.draft.drafters.base import DECODER_LAYER_FIELDS, Drafter

# the fields only drafters that fuse aux states take
AUX_STATE_FIELDS = {
    "aux_layer_ids": None,  # None: inputs of layers [2, L//2, L-3], the vLLM/SGLang default
    "norm_before_residual": False,
    # EAGLE-3.1 (vLLM's llama_eagle3 reads each from config.json): an RMSNorm over the concatenated aux states
    # before fc, one per aux state before fc, and the next draft step reading the normed output
    "norm_before_fc": False,
    "fc_norm": False,
    "norm_output": False,
    "qk_norm": False,  # Qwen3's attention (RMSNorm of each head's query and key): served as qwen3_eagle3
}


def _model(config):
    from eagle_recipes.draft.model import Eagle3Draft

    return Eagle3Draft(config)


def propose_chain(*args):
    """A chain: k passes, each reading the previous proposal and output (draft/chain.py)."""
    from eagle_recipes.draft.chain import propose_chain

    return propose_chain(*args)


def unroll_correctness(*args):
    """Each position of the training unroll, teacher forced (draft/ttt.py)."""
    from eagle_recipes.draft.ttt import step_correctness

    return step_correctness(*args)


def ttt_objective(draft, config):
    """The training-time-test unroll (EAGLE-1 and EAGLE-3): ttt_steps chained passes, each position's loss."""
    from eagle_recipes.draft.ttt import TTTObjective

    return TTTObjective(draft, config.ttt_steps, config.ttt_decay, config.loss)


EAGLE3 = Drafter(
    name="eagle3", title="EAGLE-3", defaults={**DECODER_LAYER_FIELDS, **AUX_STATE_FIELDS},
    reads_aux_states=True, calibrated_vocab=True, vllm_method="eagle3", sglang_algorithm="EAGLE3", layout=None,
    starts_from_base_head=True, build_model=_model, objective=ttt_objective, propose=propose_chain,
    correctness=unroll_correctness,
)
