"""EAGLE-1's layout (`LlamaForCausalLM` + `fc`): our names as they are, no LM head of its own (the draft
predicts through the base model's)."""

from __future__ import annotations

from typing import Any

from eagle_recipes.draft.config import DraftConfig
from eagle_recipes.draft.layouts.common import Layout, TensorSpec, decoder_layer, llama_fields


class Eagle1Layout(Layout):
    name = "eagle1"
    algorithm = "eagle1"
    # SGLang's EAGLE-1 draft class is LlamaForCausalLMEagle (`srt/models/llama_eagle.py`, fc with a bias)
    sglang_refusal = "SGLang loads EAGLE-1 drafts as LlamaForCausalLMEagle (fc with a bias); this one is written for vLLM"

    def recognises(self, config: dict) -> bool:
        return True  # the layout of a plain Llama config.json: what is left when no other layout claims it

    def config_json(self, config: DraftConfig, dtype: str, base_model: str, k: int) -> dict[str, Any]:
        return {**llama_fields(config, dtype), "architectures": ["LlamaForCausalLM"]}

    def required_tensors(self, facts: dict, first_layer: str | None) -> dict[str, TensorSpec]:
        hidden = facts["hidden_size"]
        out = {"fc.weight": (hidden, 2 * hidden)}
        for i in range(facts["num_hidden_layers"]):
            out.update(decoder_layer(f"layers.{i}", facts, hidden, input_norm=i > 0, hidden_norm=False))
        return {k: (v, None) for k, v in out.items()}
