"""A draft's architecture for a recipe: its drafter's defaults merged with the recipe's `[draft.overrides]` and
the base model's facts, checked (DraftConfigError names the recipe key)."""

from __future__ import annotations

import copy
from typing import Any

from eagle_recipes.draft.config import BaseModelFacts, DraftConfig, DraftConfigError, default_aux_layer_ids
from eagle_recipes.draft.drafters.registry import DRAFTERS, drafter

# Fields a recipe may override, per drafter, with their defaults (draft/drafters/). None: the base model's value.
DEFAULTS: dict[str, dict[str, Any]] = {name: d.defaults for name, d in DRAFTERS.items()}

# Fields that must equal the base model's: the draft reads the target's embeddings and hidden states.
DERIVED = ("hidden_size", "vocab_size", "target_num_layers", "draft_vocab_size")


def valid_fields(algorithm: str) -> list[str]:
    return sorted(DEFAULTS[algorithm])


def _merge(default: Any, override: Any) -> Any:
    """Nested tables merge key by key; anything else is replaced."""
    if isinstance(default, dict) and isinstance(override, dict):
        merged = copy.deepcopy(default)
        for key, value in override.items():
            merged[key] = _merge(merged.get(key), value)
        return merged
    return copy.deepcopy(override)


def build_draft_config(
    algorithm: str, overrides: dict[str, Any], base: BaseModelFacts, draft_vocab_size: int
) -> DraftConfig:
    """Defaults + overrides + the base model's facts -> a complete DraftConfig (raises DraftConfigError)."""
    spec = drafter(algorithm)
    defaults = spec.defaults
    for key in overrides:
        if key in DERIVED:
            raise DraftConfigError(f"draft.overrides.{key}", "is derived from the base model and cannot be overridden",
                                   "remove it; draft_vocab_size is set in [vocab]" if key == "draft_vocab_size" else "remove it")
        if key not in defaults:
            import difflib

            close = difflib.get_close_matches(key, defaults, n=1)
            hint = f"did you mean '{close[0]}'? " if close else ""
            raise DraftConfigError(f"draft.overrides.{key}", f"unknown {algorithm} architecture field",
                                   hint + "valid fields: " + ", ".join(valid_fields(algorithm)))
    values = {key: _merge(value, overrides[key]) if key in overrides else copy.deepcopy(value)
              for key, value in defaults.items()}
    if isinstance(values["rope_scaling"], dict) and base.rope_scaling:
        values["rope_scaling"] = _merge(base.rope_scaling, values["rope_scaling"])  # nested tables merge
    for key in ("intermediate_size", "num_attention_heads", "num_key_value_heads", "rms_norm_eps", "rope_theta",
                "max_position_embeddings", "rope_scaling"):
        if values.get(key) is None:
            values[key] = getattr(base, key)
    heads = values["num_attention_heads"]
    if values.get("head_dim") is None:
        values["head_dim"] = base.head_dim if heads == base.num_attention_heads else base.hidden_size // heads
    if heads % values["num_key_value_heads"]:
        raise DraftConfigError("draft.overrides.num_key_value_heads",
                               f"{values['num_key_value_heads']} does not divide num_attention_heads={heads}")
    values.update(spec.forced)
    refusal = spec.refuses(values)
    if refusal:
        raise DraftConfigError(*refusal)
    if spec.reads_aux_states:
        ids = values["aux_layer_ids"] or default_aux_layer_ids(base.num_hidden_layers)
        lowest = spec.lowest_aux_layer_id
        bad = [i for i in ids if not lowest <= i < base.num_hidden_layers]
        if bad:
            raise DraftConfigError("draft.overrides.aux_layer_ids", f"ids {bad} are outside the base model's "
                                   f"{base.num_hidden_layers} layers",
                                   f"use ids in {lowest}..{base.num_hidden_layers - 1}")
        if len(set(ids)) != len(ids):
            raise DraftConfigError("draft.overrides.aux_layer_ids", f"ids {ids} repeat a layer",
                                   "serving engines de-duplicate them and then fail; give distinct ids")
        values["aux_layer_ids"] = tuple(sorted(ids))
    if not 1 <= draft_vocab_size <= base.vocab_size:
        draft_vocab_size = base.vocab_size
    return DraftConfig(algorithm=algorithm, hidden_size=base.hidden_size, vocab_size=base.vocab_size,
                       draft_vocab_size=draft_vocab_size, target_num_layers=base.num_hidden_layers, **values)

