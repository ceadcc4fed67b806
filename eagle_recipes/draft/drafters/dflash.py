"""DFlash: Qwen3 layers (q/k norms always) that draft a block of tokens in one pass from mask slots, reading the
aux states EAGLE-3 reads, as vLLM serves it (`method = "dflash"`; the model: draft/dflash.py)."""

from typing import Any

from eagle_recipes.draft.drafters.base import DECODER_LAYER_FIELDS, Drafter


def _refuses(values: dict[str, Any]):
    if values["block_size"] < 2:
        return ("draft.overrides.block_size", f"{values['block_size']} leaves no token to draft",
                "use at least 2 (the token just produced and one mask slot)")
    return None


def _card_lines(config: dict[str, Any]) -> list[str]:
    return [f"- one pass drafts a block of {config['block_size'] - 1} tokens (mask token id "
            f"{config.get('mask_token_id')})"] if config.get("block_size") else []


def _model(config):
    from eagle_recipes.draft.dflash import DFlashDraft

    return DFlashDraft(config)


def _propose(draft, embed, lm_head, features, tokens_in, k, draft_to_target=None):
    """The block after the bonus token (the last of tokens_in), over the verified positions' aux states."""
    from eagle_recipes.draft.dflash import draft_block

    return draft_block(draft, features[0], tokens_in[-1], k, embed)


def _correctness(draft, target, embed, k, lm_head=None):
    """Each slot of the block, teacher forced (DFlash reads no LM head of the base model)."""
    from eagle_recipes.draft.dflash import dflash_correctness

    return dflash_correctness(draft, target, embed, k)


def _objective(draft, config):
    """The block objective: anchors per sequence, each a block of mask slots drafted in one pass."""
    from eagle_recipes.draft.dflash import DFlashObjective

    settings = config.drafter_settings  # the recipe's [train.dflash] table
    return DFlashObjective(draft, settings["anchors"], settings["block_loss_decay"], config.loss, config.seed)


DFLASH = Drafter(
    name="dflash", title="DFlash",
    defaults={**DECODER_LAYER_FIELDS, "aux_layer_ids": None,
              "num_hidden_layers": 2,
              "block_size": 8,  # the block: the token just produced and block_size - 1 mask slots (drafts per pass)
              "mask_token_id": None},  # None: the tokenizer's mask token, else its last added special token not in chats
    reads_aux_states=True, calibrated_vocab=True, vllm_method="dflash", sglang_algorithm=None, layout="dflash",
    needs_mask_token=True, trains_by_unroll=False,
    lowest_aux_layer_id=1,  # DFlash names layer outputs (id - 1): the embeddings have none
    step_label="block slot", forced={"qk_norm": True}, refuses=_refuses,
    max_draft_tokens=lambda config, ttt_steps: config.block_size - 1, card_lines=_card_lines, build_model=_model,
    objective=_objective, propose=_propose, correctness=_correctness,
)
