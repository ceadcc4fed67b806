"""A draft's whole architecture as plain data: `DraftConfig`, and the base model's facts it follows.

A draft is fully described by `DraftConfig`: its drafter's defaults (draft/drafters/), then the recipe's `[draft.overrides]`, then the
fields that must follow the base model (hidden size, vocabulary, layer count), which are filled in and cannot be
overridden.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any


class DraftConfigError(ValueError):
    def __init__(self, key: str, message: str, hint: str = ""):
        self.key, self.message, self.hint = key, message, hint
        super().__init__(f"{key}: {message}" + (f" ({hint})" if hint else ""))


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
