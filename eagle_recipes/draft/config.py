"""A draft's whole architecture: its drafter's defaults (draft/drafters/) merged with a recipe's overrides.

A draft is fully described by `DraftConfig`: its drafter's defaults, then the recipe's `[draft.overrides]`, then the
fields that must follow the base model (hidden size, vocabulary, layer count), which are filled in and cannot be
overridden.
"""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from eagle_recipes.draft.drafters import DRAFTERS, drafter

# Fields a recipe may override, per drafter, with their defaults (draft/drafters/). None: the base model's value.
DEFAULTS: dict[str, dict[str, Any]] = {name: d.defaults for name, d in DRAFTERS.items()}

# Fields that must equal the base model's: the draft reads the target's embeddings and hidden states.
DERIVED = ("hidden_size", "vocab_size", "target_num_layers", "draft_vocab_size")


class DraftConfigError(ValueError):
    def __init__(self, key: str, message: str, hint: str = ""):
        self.key, self.message, self.hint = key, message, hint
        super().__init__(f"{key}: {message}" + (f" ({hint})" if hint else ""))


def reads_aux_states(algorithm: str) -> bool:
    """Whether the drafter reads the base model's aux hidden states (else its final state only)."""
    return drafter(algorithm).reads_aux_states


def text_config(config: dict) -> dict:
    """The language model's part of a config.json: multimodal families (Gemma 3) nest it in `text_config`."""
    return config.get("text_config") or config


@dataclass(frozen=True)
class BaseModelFacts:
    """What the draft needs to know about the base model (read from its config.json)."""

    num_hidden_layers: int
    hidden_size: int
    intermediate_size: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    vocab_size: int
    rms_norm_eps: float
    rope_theta: float
    rope_scaling: dict | None
    max_position_embeddings: int
    hidden_act: str

    @classmethod
    def from_config(cls, config: dict) -> "BaseModelFacts":
        text = text_config(config)
        heads = text["num_attention_heads"]
        rope = text.get("rope_parameters") or {}
        rope_scaling = text.get("rope_scaling") or ({k: v for k, v in rope.items() if k != "rope_theta"} or None)
        if rope_scaling and rope_scaling.get("rope_type", rope_scaling.get("type")) == "default":
            rope_scaling = None
        intermediate = text.get("intermediate_size") or text.get("moe_intermediate_size")
        return cls(
            num_hidden_layers=text["num_hidden_layers"],
            hidden_size=text["hidden_size"],
            intermediate_size=intermediate,
            num_attention_heads=heads,
            num_key_value_heads=text.get("num_key_value_heads") or heads,
            head_dim=text.get("head_dim") or text["hidden_size"] // heads,
            vocab_size=text["vocab_size"],
            rms_norm_eps=text.get("rms_norm_eps", 1e-6),
            rope_theta=text.get("rope_theta", rope.get("rope_theta", 10000.0)),
            rope_scaling=rope_scaling,
            max_position_embeddings=text.get("max_position_embeddings", 4096),
            hidden_act=text.get("hidden_act", text.get("hidden_activation", "silu")),
        )


@dataclass(frozen=True)
class DraftConfig:
    algorithm: str
    hidden_size: int
    vocab_size: int
    draft_vocab_size: int
    target_num_layers: int
    num_hidden_layers: int
    intermediate_size: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    hidden_act: str
    rms_norm_eps: float
    rope_theta: float
    rope_scaling: dict | None
    max_position_embeddings: int
    aux_layer_ids: tuple[int, ...] = field(default_factory=tuple)
    norm_before_residual: bool = False
    norm_before_fc: bool = False
    fc_norm: bool = False
    norm_output: bool = False
    qk_norm: bool = False
    block_size: int = 0  # DFlash
    mask_token_id: int | None = None  # DFlash

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "DraftConfig":
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in data.items() if k in known}
        values["aux_layer_ids"] = tuple(values.get("aux_layer_ids") or ())
        return cls(**values)


def default_aux_layer_ids(num_layers: int) -> list[int]:
    """Inputs of layers [2, L//2, L-3] (vLLM/SGLang numbering), de-duplicated and sorted as engines do."""
    return sorted({2, num_layers // 2, num_layers - 3})


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

