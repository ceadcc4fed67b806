"""DFlash's layout (`DFlashDraftModel`, as vLLM's qwen3_dflash loads it): Qwen3 layers under our names, fc and
hidden_norm over the context, the norm and an LM head over the draft vocabulary."""

from __future__ import annotations

from typing import Any

from eagle_recipes.draft.config import DraftConfig
from eagle_recipes.draft.engine_rules import export_fields, trained_layers
from eagle_recipes.draft.layouts.common import AuxStateLayout, TensorSpec, aux_state_tensors, decoder_layer, llama_fields


class DFlashLayout(AuxStateLayout):
    name = "dflash"
    algorithm = "dflash"
    # SGLang's DFlashDraftModel predicts through the target's LM head (`srt/models/dflash.py`)
    sglang_refusal = ("SGLang's DFlash drafts through the base model's LM head; this draft has its own head over a "
                      "calibrated vocabulary")
    architecture_word, config_key = "DFlash", "dflash_config"

    def config_json(self, config: DraftConfig, dtype: str, base_model: str, k: int) -> dict[str, Any]:
        # `block_size` documents the block (vLLM drafts num_speculative_tokens)
        return {**llama_fields(config, dtype), "architectures": ["DFlashDraftModel"],
                "draft_vocab_size": config.draft_vocab_size, "target_hidden_size": config.hidden_size,
                "block_size": config.block_size, "layer_types": ["full_attention"] * config.num_hidden_layers,
                **export_fields(config.aux_layer_ids)[0],  # vLLM's runners read it before target_layer_ids
                "dflash_config": {"mask_token_id": config.mask_token_id,
                                  "target_layer_ids": [i - 1 for i in config.aux_layer_ids]}}

    def drafter_facts(self, config: dict, body: dict) -> dict[str, Any]:
        dflash = config.get("dflash_config") or {}
        ids, _ = trained_layers(config)  # DFlash names layer outputs: target_layer_ids + 1 are our ids
        return {"draft_vocab_size": config.get("draft_vocab_size") or body["vocab_size"],
                "target_hidden_size": config.get("target_hidden_size") or body["hidden_size"],
                "aux_layer_ids": list(ids or [1, 1, 1]), "aux_ids_written": bool(ids),
                "block_size": int(config.get("block_size") or 0), "mask_token_id": dflash.get("mask_token_id"),
                "qk_norm": True}

    def required_tensors(self, facts: dict, first_layer: str | None) -> dict[str, TensorSpec]:
        hidden = facts["hidden_size"]
        layers: dict[str, tuple] = {}
        for i in range(facts["num_hidden_layers"]):
            layers.update(decoder_layer(f"layers.{i}", {**facts, "qk_norm": True}, hidden, input_norm=True,
                                        hidden_norm=False))
        layers["hidden_norm.weight"] = (hidden,)
        return aux_state_tensors(layers, facts)
