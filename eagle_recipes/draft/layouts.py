"""Draft folder layouts: what each one names, holds and writes in config.json, and the renames to and from ours.

Our modules (draft/model.py) use the flat names: EAGLE-3 `fc`, `midlayer.*` (first decoder layer), `layers.{i}.*`
(extra layers, from 0), `norm`, `lm_head`; EAGLE-1 `fc`, `layers.{i}.*`. The layouts engines load:

- flat (EAGLE-3 `LlamaForCausalLMEagle3`, as the EAGLE authors, SpecForge and ModelOpt write it): first layer
  `midlayer.*` or `layers.0.*` (vLLM maps `midlayer.` to `layers.0.`; ModelOpt writes `layers.0.`), extra layers
  `layers.{i}.*` from 1;
- speculators (`Eagle3Speculator`): first layer `layers.0.*`, extra layers from 1, the Llama fields nested in
  `transformer_layer_config`;
- eagle1 (`LlamaForCausalLM` + `fc`): our names.

Engines read `d2t` when the draft vocabulary is smaller, never `t2d`, and take an `embed_tokens` copy when one is
there (SpecForge and speculators write it). Anything else they drop or leave at its random init.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from eagle_recipes.draft.config import DraftConfig
from eagle_recipes.errors import UserError

FLOAT_DTYPES = {"F32", "BF16", "F16"}


def layout_of(config: dict) -> str:
    if config.get("speculators_model_type"):
        return "speculators"
    if "DFlash" in " ".join(config.get("architectures", [])) or "dflash_config" in config:
        return "dflash"
    if "Eagle3" in " ".join(config.get("architectures", [])) or "eagle_config" in config:
        return "flat"
    return "eagle1"


def algorithm_of(layout: str) -> str:
    return layout if layout in ("eagle1", "dflash") else "eagle3"


# ---------------------------------------------------------------- config.json
class LayoutError(UserError):
    """A draft folder that cannot be read as any layout (names the file and the field)."""


def config_facts(config: dict) -> dict[str, Any]:
    """The architecture values of any layout's config.json (raises LayoutError naming a missing field)."""
    layout = layout_of(config)
    body = config.get("transformer_layer_config") if layout == "speculators" else config
    if not isinstance(body, dict):
        raise LayoutError("config.json: transformer_layer_config is missing or not a table")
    missing = [k for k in ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
                           "vocab_size") if not isinstance(body.get(k), int)]
    if missing:
        raise LayoutError(f"config.json: missing or non-integer field(s) {', '.join(missing)}")
    heads = body["num_attention_heads"]
    facts = {k: body[k] for k in ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
                                  "vocab_size")}
    facts["num_key_value_heads"] = body.get("num_key_value_heads") or heads
    facts["head_dim"] = body.get("head_dim") or body["hidden_size"] // heads
    for key, default in (("hidden_act", "silu"), ("rms_norm_eps", 1e-6), ("rope_theta", 10000.0),
                         ("rope_scaling", None), ("max_position_embeddings", 4096)):
        facts[key] = body.get(key, default)
    if layout == "dflash":  # vLLM's DFlash names layer outputs: target_layer_ids + 1 are our aux ids
        dflash = config.get("dflash_config") or {}
        ids = dflash.get("target_layer_ids")
        facts.update(draft_vocab_size=config.get("draft_vocab_size") or body["vocab_size"],
                     target_hidden_size=config.get("target_hidden_size") or body["hidden_size"],
                     aux_layer_ids=[i + 1 for i in ids or [0, 0, 0]], aux_ids_written=bool(ids),
                     block_size=int(config.get("block_size") or 0), mask_token_id=dflash.get("mask_token_id"),
                     qk_norm=True)
    elif layout != "eagle1":
        facts["draft_vocab_size"] = config.get("draft_vocab_size") or body["vocab_size"]
        facts["target_hidden_size"] = config.get("target_hidden_size") or body["hidden_size"]
        ids = (config.get("eagle_config") or {}).get("eagle_aux_hidden_state_layer_ids") \
            or config.get("eagle_aux_hidden_state_layer_ids")
        facts["aux_layer_ids"] = list(ids or [0, 0, 0])  # engines default to 3 layers
        facts["aux_ids_written"] = bool(ids)
        facts["norm_before_residual"] = bool(config.get("norm_before_residual", layout == "speculators"))
        # EAGLE-3.1 switches, where vLLM's llama_eagle3 reads them (norm_before_fc also under eagle_config)
        facts["norm_before_fc"] = bool((config.get("eagle_config") or {}).get("norm_before_fc",
                                                                              config.get("norm_before_fc", False)))
        facts["fc_norm"] = bool(config.get("fc_norm", False))
        facts["norm_output"] = bool(config.get("norm_output", False))
        facts["qk_norm"] = body.get("model_type") == "qwen3"  # Qwen3's attention: q_norm and k_norm
    return facts


LAYER_TYPES = {False: ("llama", "LlamaForCausalLM"), True: ("qwen3", "Qwen3ForCausalLM")}  # by qk_norm


def _llama_fields(config: DraftConfig, dtype: str) -> dict[str, Any]:
    return {
        "model_type": LAYER_TYPES[config.qk_norm][0], "hidden_size": config.hidden_size, "intermediate_size": config.intermediate_size,
        "num_hidden_layers": config.num_hidden_layers, "num_attention_heads": config.num_attention_heads,
        "num_key_value_heads": config.num_key_value_heads, "head_dim": config.head_dim,
        "hidden_act": config.hidden_act, "rms_norm_eps": config.rms_norm_eps, "rope_theta": config.rope_theta,
        "rope_scaling": config.rope_scaling, "max_position_embeddings": config.max_position_embeddings,
        "vocab_size": config.vocab_size, "tie_word_embeddings": False, "attention_bias": False,
        "mlp_bias": False, "torch_dtype": dtype,
    }


def layout_config(config: DraftConfig, layout: str, dtype: str, base_model: str, k: int) -> dict[str, Any]:
    """The config.json a layout's loader reads."""
    llama = _llama_fields(config, dtype)
    if layout == "eagle1":
        return {**llama, "architectures": ["LlamaForCausalLM"]}
    if layout == "dflash":  # Qwen3 layers; `block_size` documents the block (vLLM drafts num_speculative_tokens)
        return {**llama, "architectures": ["DFlashDraftModel"], "draft_vocab_size": config.draft_vocab_size,
                "target_hidden_size": config.hidden_size, "block_size": config.block_size,
                "layer_types": ["full_attention"] * config.num_hidden_layers,
                "dflash_config": {"mask_token_id": config.mask_token_id,
                                  "target_layer_ids": [i - 1 for i in config.aux_layer_ids]}}
    eagle3 = {"draft_vocab_size": config.draft_vocab_size, "target_hidden_size": config.hidden_size,
              "norm_before_residual": config.norm_before_residual, "norm_before_fc": config.norm_before_fc,
              "fc_norm": config.fc_norm, "norm_output": config.norm_output}
    if layout == "flat":
        architecture = "Eagle3Qwen3ForCausalLM" if config.qk_norm else "LlamaForCausalLMEagle3"
        return {**llama, **eagle3, "architectures": [architecture],
                "eagle_config": {"eagle_aux_hidden_state_layer_ids": list(config.aux_layer_ids),
                                 "use_aux_hidden_state": True, "norm_before_fc": config.norm_before_fc}}
    return {"architectures": ["Eagle3Speculator"], "speculators_model_type": "eagle3",
            "transformer_layer_config": {**llama, "architectures": [LAYER_TYPES[config.qk_norm][1]]}, **eagle3,
            "eagle_aux_hidden_state_layer_ids": list(config.aux_layer_ids),
            "speculators_config": {"algorithm": "eagle3", "default_proposal_method": "greedy",
                                   "proposal_methods": [{"proposal_type": "greedy", "speculative_tokens": k}],
                                   "verifier": {"name_or_path": base_model, "architectures": ["LlamaForCausalLM"]}},
            "torch_dtype": dtype}


def with_long_context(config: DraftConfig, rope_scaling: dict) -> DraftConfig:
    """The config to serve beyond the training length: the rope scaling written, max_position_embeddings raised
    to factor x the original length (the weights stay as trained)."""
    if not rope_scaling:
        return config
    from dataclasses import replace

    original = rope_scaling.get("original_max_position_embeddings", config.max_position_embeddings)
    return replace(config, rope_scaling=dict(rope_scaling),
                   max_position_embeddings=int(rope_scaling["factor"] * original))


ROPE_TYPES = ("linear", "dynamic", "yarn", "llama3", "longrope")  # the rope scalings vLLM and SGLang build
ROPE_TYPES_NEEDING_LENGTH = ("yarn", "llama3")  # they scale relative to original_max_position_embeddings


def rope_scaling_problems(kind, factor, original) -> list[tuple[str, str]]:
    """(field, what is wrong) for a rope scaling engines would not build as meant; field "" is the whole table.
    The one check behind `validate` (a recipe's export.rope_scaling) and `inspect` (a config.json's)."""
    problems = []
    if kind not in ROPE_TYPES:
        problems.append(("rope_type", f"rope_type is {kind!r}; engines build {', '.join(ROPE_TYPES)}"))
    if isinstance(factor, bool) or not isinstance(factor, (int, float)) or factor < 1:
        problems.append(("factor", f"factor is {factor!r}, expected a number >= 1"))
    if kind in ROPE_TYPES_NEEDING_LENGTH and (isinstance(original, bool) or not isinstance(original, int)):
        problems.append(("", f"{kind} rope scaling lacks original_max_position_embeddings"))
    return problems


def rope_problems(facts: dict) -> list[str]:
    """What an engine would misread in a config's rope scaling (empty when there is none or it is sound)."""
    rope = facts.get("rope_scaling")
    if not rope:
        return []
    if not isinstance(rope, dict):
        return [f"config.json: rope_scaling is {type(rope).__name__}, expected a table"]
    kind = rope.get("rope_type", rope.get("type"))  # transformers still reads the older `type`
    if kind == "default":  # no scaling
        return []
    return [f"config.json: rope_scaling.{text}" if field else f"config.json: {text}"
            for field, text in rope_scaling_problems(kind, rope.get("factor"),
                                                     rope.get("original_max_position_embeddings"))]


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


# ---------------------------------------------------------------- tensors each layout holds
def _layer(prefix: str, c: dict, input_width: int, input_norm: bool, hidden_norm: bool) -> dict[str, tuple]:
    hidden, heads, kv, head_dim = c["hidden_size"], c["num_attention_heads"], c["num_key_value_heads"], c["head_dim"]
    inter = c["intermediate_size"]
    tensors = {f"{prefix}.self_attn.{name}.weight": (head_dim,) for name in ("q_norm", "k_norm")
               if c.get("qk_norm")}
    tensors |= {
        f"{prefix}.self_attn.q_proj.weight": (heads * head_dim, input_width),
        f"{prefix}.self_attn.k_proj.weight": (kv * head_dim, input_width),
        f"{prefix}.self_attn.v_proj.weight": (kv * head_dim, input_width),
        f"{prefix}.self_attn.o_proj.weight": (hidden, heads * head_dim),
        f"{prefix}.mlp.gate_proj.weight": (inter, hidden),
        f"{prefix}.mlp.up_proj.weight": (inter, hidden),
        f"{prefix}.mlp.down_proj.weight": (hidden, inter),
        f"{prefix}.post_attention_layernorm.weight": (hidden,),
    }
    if input_norm:
        tensors[f"{prefix}.input_layernorm.weight"] = (hidden,)
    if hidden_norm:
        tensors[f"{prefix}.hidden_norm.weight"] = (hidden,)
    return tensors


TensorSpec = tuple[tuple[int, ...], "str | None"]  # (shape, safetensors dtype, or None for the weights' dtype)


def required_tensors(layout: str, c: dict, first_layer: str | None = None) -> dict[str, TensorSpec]:
    """{name: TensorSpec} that the engine must find, for config facts `c`.

    first_layer: the prefix of EAGLE-3's first layer ("midlayer" or "layers.0"); default: the layout's own."""
    hidden, layers = c["hidden_size"], c["num_hidden_layers"]
    out: dict[str, tuple] = {}
    if layout == "eagle1":
        out["fc.weight"] = (hidden, 2 * hidden)
        for i in range(layers):
            out.update(_layer(f"layers.{i}", c, hidden, input_norm=i > 0, hidden_norm=False))
        return {k: (v, None) for k, v in out.items()}
    if layout == "dflash":  # Qwen3 layers (q/k norms), fc and hidden_norm over the context, norm, LM head
        for i in range(layers):
            out.update(_layer(f"layers.{i}", {**c, "qk_norm": True}, hidden, input_norm=True, hidden_norm=False))
        out["hidden_norm.weight"] = (hidden,)
    else:
        out.update(_eagle3_layers(first_layer or ("midlayer" if layout == "flat" else "layers.0"), c))
    aux, target_hidden = len(c["aux_layer_ids"]), c["target_hidden_size"]
    out["fc.weight"] = (hidden, aux * target_hidden)
    if c.get("norm_before_fc"):
        out["input_norm.weight"] = (aux * target_hidden,)
    if c.get("fc_norm"):
        out.update({f"fc_norm.{i}.weight": (target_hidden,) for i in range(aux)})
    out["norm.weight"] = (hidden,)
    out["lm_head.weight"] = (c["draft_vocab_size"], hidden)
    result = {k: (v, None) for k, v in out.items()}
    if c["draft_vocab_size"] != c["vocab_size"]:
        result["d2t"] = ((c["draft_vocab_size"],), "I64")  # without it vLLM maps draft ids with zeros
    return result


def _eagle3_layers(first: str, c: dict) -> dict[str, tuple]:
    """EAGLE-3's first layer (2H wide input, hidden_norm) and the plain layers after it."""
    hidden = c["hidden_size"]
    out = _layer(first, c, 2 * hidden, input_norm=True, hidden_norm=True)
    for i in range(1, c["num_hidden_layers"]):
        out.update(_layer(f"layers.{i}", c, hidden, input_norm=True, hidden_norm=False))
    return out


def optional_tensors(layout: str, c: dict) -> dict[str, TensorSpec]:
    """Tensors an engine reads when present (or skips without harm), with the shape they must have."""
    if layout == "eagle1":
        return {}
    optional: dict[str, tuple] = {"embed_tokens.weight": ((c["vocab_size"], c["hidden_size"]), None)}
    if c["draft_vocab_size"] != c["vocab_size"]:
        optional["t2d"] = ((c["vocab_size"],), "BOOL")  # never read by vLLM or SGLang; we write it for tools
    return optional


def first_layer_prefix(layout: str, names: set[str]) -> str:
    """Which name a folder gives EAGLE-3's first layer (flat accepts both, as vLLM does)."""
    if layout == "flat" and not any(n.startswith("midlayer.") for n in names) \
            and any(n.startswith("layers.0.") for n in names):
        return "layers.0"
    return "midlayer" if layout == "flat" else "layers.0"


# ---------------------------------------------------------------- renames
def to_layout(state: dict, layout: str) -> dict:
    """Our module names -> the layout's names (EAGLE-3 extra layers are numbered from 1)."""
    renamed = {}
    for name, tensor in state.items():
        if layout in ("flat", "speculators") and name.startswith("layers."):  # DFlash: our names as they are
            index, rest = name.split(".", 2)[1:]
            name = f"layers.{int(index) + 1}.{rest}"
        if layout == "speculators" and name.startswith("midlayer."):
            name = "layers.0." + name[len("midlayer."):]
        renamed[name] = tensor
    return renamed


def from_layout(tensors: dict, layout: str) -> dict:
    """A layout's names -> our module names; tensors our modules do not hold (d2t, t2d, embed_tokens) dropped."""
    state = {}
    for name, tensor in tensors.items():
        if name in ("d2t", "t2d", "embed_tokens.weight"):
            continue
        if layout in ("flat", "speculators") and name.startswith("layers."):
            index, rest = name.split(".", 2)[1:]
            name = f"midlayer.{rest}" if index == "0" else f"layers.{int(index) - 1}.{rest}"
        state[name] = tensor
    return state


# ---------------------------------------------------------------- folders
def read_config(folder: Path) -> dict:
    """config.json of a draft folder (raises LayoutError naming the file)."""
    path = folder / "config.json"
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise LayoutError(f"{path}: not found (is {folder} a draft folder?)") from None
    except IsADirectoryError:
        raise LayoutError(f"{path}: is a directory, expected a JSON file") from None
    except (OSError, UnicodeDecodeError) as error:
        raise LayoutError(f"{path}: cannot read it ({error})") from None
    except ValueError as error:
        raise LayoutError(f"{path}: not valid JSON ({error})") from None
    if not isinstance(config, dict):
        raise LayoutError(f"{path}: expected a JSON object, found {type(config).__name__}")
    return config


def read_tensors(folder: Path) -> dict:
    """Every tensor of a draft folder's *.safetensors files, names as written."""
    from safetensors.torch import load_file

    tensors = {}
    for path in sorted(folder.glob("*.safetensors")):
        tensors.update(load_file(str(path)))
    return tensors


def load_draft_module(folder: Path):
    """Our nn.Module, its DraftConfig and d2t, from a draft folder in any layout (ours or a peer's)."""
    import torch

    from eagle_recipes.draft.model import build_draft

    config_json = read_config(folder)
    layout = layout_of(config_json)
    config = draft_config_from_facts(config_facts(config_json), layout)
    tensors = read_tensors(folder)
    state = {name: tensor.float() for name, tensor in from_layout(tensors, layout).items()}
    draft = build_draft(config)
    draft.load_state_dict(state, strict=True)
    d2t = tensors.get("d2t", torch.zeros(config.draft_vocab_size, dtype=torch.int64))
    return draft.eval(), config, d2t.to(torch.int64)

