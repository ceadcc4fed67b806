"""EAGLE-3's two layouts. Our modules name the first decoder layer `midlayer.*` and the extra layers
`layers.{i}.*` from 0.

- flat (`LlamaForCausalLMEagle3`, as the EAGLE authors, SpecForge and ModelOpt write it): the first layer is
  `midlayer.*` or `layers.0.*` (vLLM maps `midlayer.` to `layers.0.`; ModelOpt writes `layers.0.`), and the extra
  layers are `layers.{i}.*` from 1;
- speculators (`Eagle3Speculator`): the first layer is `layers.0.*`, the extra layers count from 1, and the Llama
  fields nest in `transformer_layer_config`.
"""

from __future__ import annotations

from typing import Any

from eagle_recipes.draft.config import DraftConfig
from eagle_recipes.draft.engine_rules import export_fields, trained_layers
from eagle_recipes.draft.layouts.common import (
    LAYER_TYPES,
    AuxStateLayout,
    TensorSpec,
    aux_state_tensors,
    decoder_layer,
    llama_fields,
)


class Eagle3Layout(AuxStateLayout):
    """What both EAGLE-3 layouts share: the facts, the tensors, extra layers numbered from 1."""

    algorithm = "eagle3"
    first_layer = "layers.0"

    def drafter_facts(self, config: dict, body: dict) -> dict[str, Any]:
        eagle = config.get("eagle_config") or {}
        ids, _ = trained_layers(config)  # in our numbering, whichever engine's numbering the folder wrote
        return {
            "draft_vocab_size": config.get("draft_vocab_size") or body["vocab_size"],
            "target_hidden_size": config.get("target_hidden_size") or body["hidden_size"],
            "aux_layer_ids": list(ids or [0, 0, 0]),  # engines default to 3 layers
            "aux_ids_written": bool(ids),
            "norm_before_residual": bool(config.get("norm_before_residual", self.norm_before_residual_default)),
            # EAGLE-3.1 switches, where vLLM's llama_eagle3 reads them (norm_before_fc also under eagle_config)
            "norm_before_fc": bool(eagle.get("norm_before_fc", config.get("norm_before_fc", False))),
            "fc_norm": bool(config.get("fc_norm", False)),
            "norm_output": bool(config.get("norm_output", False)),
            "qk_norm": body.get("model_type") == "qwen3",  # Qwen3's attention: q_norm and k_norm
        }

    norm_before_residual_default = False

    def required_tensors(self, facts: dict, first_layer: str | None) -> dict[str, TensorSpec]:
        hidden = facts["hidden_size"]
        layers = decoder_layer(first_layer or self.first_layer, facts, 2 * hidden, input_norm=True, hidden_norm=True)
        for i in range(1, facts["num_hidden_layers"]):
            layers.update(decoder_layer(f"layers.{i}", facts, hidden, input_norm=True, hidden_norm=False))
        return aux_state_tensors(layers, facts)

    def eagle3_fields(self, config: DraftConfig) -> dict[str, Any]:
        return {"draft_vocab_size": config.draft_vocab_size, "target_hidden_size": config.hidden_size,
                "norm_before_residual": config.norm_before_residual, "norm_before_fc": config.norm_before_fc,
                "fc_norm": config.fc_norm, "norm_output": config.norm_output}

    def layout_name(self, name: str) -> str:
        if name.startswith("layers."):  # extra layers count from 1: 0 is the first layer
            index, rest = name.split(".", 2)[1:]
            return f"layers.{int(index) + 1}.{rest}"
        return name

    def our_name(self, name: str) -> str:
        if name.startswith("layers."):
            index, rest = name.split(".", 2)[1:]
            return f"midlayer.{rest}" if index == "0" else f"layers.{int(index) - 1}.{rest}"
        return name


class FlatLayout(Eagle3Layout):
    name = "flat"
    first_layer = "midlayer"
    architecture_word, config_key = "Eagle3", "eagle_config"

    def config_json(self, config: DraftConfig, dtype: str, base_model: str, k: int) -> dict[str, Any]:
        architecture = "Eagle3Qwen3ForCausalLM" if config.qk_norm else "LlamaForCausalLMEagle3"
        vllm_ids, sglang_ids = export_fields(config.aux_layer_ids)  # each engine reads the trained layers
        return {**llama_fields(config, dtype), **self.eagle3_fields(config), "architectures": [architecture],
                **vllm_ids, "eagle_config": {**sglang_ids, "use_aux_hidden_state": True,
                                             "norm_before_fc": config.norm_before_fc}}

    def first_layer_prefix(self, names: set[str]) -> str:
        """flat accepts both names for the first layer, as vLLM does."""
        if not any(n.startswith("midlayer.") for n in names) and any(n.startswith("layers.0.") for n in names):
            return "layers.0"
        return "midlayer"


class SpeculatorsLayout(Eagle3Layout):
    name = "speculators"
    sglang_refusal = "SGLang reads no speculators config (export.layout = \"flat\" writes one it reads)"
    norm_before_residual_default = True

    def recognises(self, config: dict) -> bool:
        return bool(config.get("speculators_model_type"))  # its architecture also names Eagle3: asked first

    def body(self, config: dict) -> Any:
        return config.get("transformer_layer_config")

    def config_json(self, config: DraftConfig, dtype: str, base_model: str, k: int) -> dict[str, Any]:
        llama = llama_fields(config, dtype)
        return {"architectures": ["Eagle3Speculator"], "speculators_model_type": "eagle3",
                "transformer_layer_config": {**llama, "architectures": [LAYER_TYPES[config.qk_norm][1]]},
                **self.eagle3_fields(config), **export_fields(config.aux_layer_ids)[0],
                "speculators_config": {"algorithm": "eagle3", "default_proposal_method": "greedy",
                                       "proposal_methods": [{"proposal_type": "greedy", "speculative_tokens": k}],
                                       "verifier": {"name_or_path": base_model,
                                                    "architectures": ["LlamaForCausalLM"]}},
                "torch_dtype": dtype}

    def layout_name(self, name: str) -> str:
        if name.startswith("midlayer."):
            return "layers.0." + name[len("midlayer."):]
        return super().layout_name(name)


class PEagleLayout(FlatLayout):
    """P-EAGLE (draft/peagle.py): the flat layout, plus what vLLM's parallel drafting reads: the mask token as
    `ptd_token_id` in config.json and the learned `mask_hidden` [1, aux x hidden] among the weights."""

    name = "peagle"
    algorithm = "peagle"
    sglang_refusal = "SGLang has no P-EAGLE (parallel drafting) for EAGLE-3 drafts"
    architecture_word, config_key = "", "ptd_token_id"  # its architecture is EAGLE-3's: asked before flat

    def config_json(self, config: DraftConfig, dtype: str, base_model: str, k: int) -> dict[str, Any]:
        return {**super().config_json(config, dtype, base_model, k), "ptd_token_id": config.mask_token_id}

    def drafter_facts(self, config: dict, body: dict) -> dict[str, Any]:
        return {**super().drafter_facts(config, body), "mask_token_id": config.get("ptd_token_id")}

    def required_tensors(self, facts: dict, first_layer: str | None) -> dict[str, TensorSpec]:
        width = len(facts["aux_layer_ids"]) * facts["target_hidden_size"]
        return {**super().required_tensors(facts, first_layer), "mask_hidden": ((1, width), None)}
