"""Draft folder layouts: the ways of writing a draft that engines load, one `Layout` each (common.py), found by
name or by the config.json they write. Each says what it names, holds and writes, and how its tensor names map to
ours (draft/model.py: EAGLE-3 `fc`, `midlayer.*` for the first decoder layer, `layers.{i}.*` for the extra layers
from 0, `norm`, `lm_head`; EAGLE-1 `fc`, `layers.{i}.*`; DFlash as vLLM names it).

Engines read `d2t` when the draft vocabulary is smaller, never `t2d`, and take an `embed_tokens` copy when one is
there (SpecForge and speculators write it). Anything else they drop or leave at its random init.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from eagle_recipes.draft.config import DraftConfig
from eagle_recipes.draft.layouts.common import FLOAT_DTYPES, Layout, LayoutError, TensorSpec, layer_facts
from eagle_recipes.draft.layouts.dflash import DFlashLayout
from eagle_recipes.draft.layouts.eagle1 import Eagle1Layout
from eagle_recipes.draft.layouts.eagle3 import FlatLayout, PEagleLayout, SpeculatorsLayout
from eagle_recipes.draft.layouts.folder import read_config, read_tensors
from eagle_recipes.draft.layouts.rope import rope_problems, rope_scaling_problems, with_long_context

# in the order a config.json is recognised: EAGLE-1's plain Llama config is what no other layout claims
LAYOUTS: tuple[Layout, ...] = (SpeculatorsLayout(), DFlashLayout(), PEagleLayout(), FlatLayout(), Eagle1Layout())
BY_NAME = {layout.name: layout for layout in LAYOUTS}
IGNORED_TENSORS = ("d2t", "t2d", "embed_tokens.weight")  # held by the folder, not by our modules


def layout_of(config: dict) -> str:
    """The layout a config.json is written in."""
    return next(layout.name for layout in LAYOUTS if layout.recognises(config))


def algorithm_of(layout: str) -> str:
    """The drafter whose weights a layout holds."""
    return BY_NAME[layout].algorithm


def config_facts(config: dict) -> dict[str, Any]:
    """The architecture values of any layout's config.json (raises LayoutError naming a missing field)."""
    layout = BY_NAME[layout_of(config)]
    body = layout.body(config)
    facts = layer_facts(body)
    facts.update(layout.drafter_facts(config, body))
    facts.update(reads_aux_states=layout.reads_aux_states, sglang_refusal=layout.sglang_refusal)
    return facts


def layout_config(config: DraftConfig, layout: str, dtype: str, base_model: str, k: int) -> dict[str, Any]:
    """The config.json a layout's loader reads."""
    return BY_NAME[layout].config_json(config, dtype, base_model, k)


def required_tensors(layout: str, facts: dict, first_layer: str | None = None) -> dict[str, TensorSpec]:
    """{name: TensorSpec} that the engine must find, for config facts `facts`.

    first_layer: the prefix of EAGLE-3's first layer ("midlayer" or "layers.0"); default: the layout's own."""
    return BY_NAME[layout].required_tensors(facts, first_layer)


def optional_tensors(layout: str, facts: dict) -> dict[str, TensorSpec]:
    """Tensors an engine reads when present (or skips without harm), with the shape they must have."""
    return BY_NAME[layout].optional_tensors(facts)


def first_layer_prefix(layout: str, names: set[str]) -> str:
    """Which name a folder gives the first decoder layer."""
    return BY_NAME[layout].first_layer_prefix(names)


def to_layout(state: dict, layout: str) -> dict:
    """Our module names -> the layout's names."""
    rename = BY_NAME[layout].layout_name
    return {rename(name): tensor for name, tensor in state.items()}


def from_layout(tensors: dict, layout: str) -> dict:
    """A layout's names -> our module names; tensors our modules do not hold (d2t, t2d, embed_tokens) dropped."""
    rename = BY_NAME[layout].our_name
    return {rename(name): tensor for name, tensor in tensors.items() if name not in IGNORED_TENSORS}


def draft_config_from_facts(facts: dict[str, Any], layout: str) -> DraftConfig:
    """Our DraftConfig for a folder's config.json (target_num_layers is unknown there: 0)."""
    return DraftConfig(
        algorithm=algorithm_of(layout), hidden_size=facts["hidden_size"], vocab_size=facts["vocab_size"],
        draft_vocab_size=facts.get("draft_vocab_size", facts["vocab_size"]), target_num_layers=0,
        num_hidden_layers=facts["num_hidden_layers"], intermediate_size=facts["intermediate_size"],
        num_attention_heads=facts["num_attention_heads"], num_key_value_heads=facts["num_key_value_heads"],
        head_dim=facts["head_dim"], hidden_act=facts["hidden_act"], rms_norm_eps=facts["rms_norm_eps"],
        rope_theta=facts["rope_theta"], rope_scaling=facts["rope_scaling"],
        max_position_embeddings=facts["max_position_embeddings"],
        block_size=facts.get("block_size", 0), mask_token_id=facts.get("mask_token_id"),
        aux_layer_ids=tuple(facts.get("aux_layer_ids", ())),
        norm_before_residual=facts.get("norm_before_residual", False),
        **{switch: facts.get(switch, False) for switch in ("norm_before_fc", "fc_norm", "norm_output", "qk_norm")})


def load_draft_module(folder: Path):
    """Our nn.Module, its DraftConfig and d2t, from a draft folder in any layout (ours or a peer's)."""
    import torch

    from eagle_recipes.draft.drafters import build_draft

    config_json = read_config(folder)
    layout = layout_of(config_json)
    config = draft_config_from_facts(config_facts(config_json), layout)
    tensors = read_tensors(folder)
    state = {name: tensor.float() for name, tensor in from_layout(tensors, layout).items()}
    draft = build_draft(config)
    draft.load_state_dict(state, strict=True)
    d2t = tensors.get("d2t", torch.zeros(config.draft_vocab_size, dtype=torch.int64))
    return draft.eval(), config, d2t.to(torch.int64)


__all__ = ["FLOAT_DTYPES", "LAYOUTS", "Layout", "LayoutError", "algorithm_of", "config_facts", "draft_config_from_facts",
           "first_layer_prefix", "from_layout", "layout_config", "layout_of", "load_draft_module", "optional_tensors",
           "read_config", "read_tensors", "required_tensors", "rope_problems", "rope_scaling_problems", "to_layout",
           "with_long_context"]
