"""What every layout shares: the `Layout` interface, the Llama fields of a config.json, a decoder layer's
tensors, and the fields every layout's config.json gives."""

from __future__ import annotations

from typing import Any, ClassVar

from eagle_recipes.draft.config import DraftConfig
from eagle_recipes.errors import UserError

FLOAT_DTYPES = {"F32", "BF16", "F16"}
LAYER_TYPES = {False: ("llama", "LlamaForCausalLM"), True: ("qwen3", "Qwen3ForCausalLM")}  # by qk_norm
TensorSpec = tuple[tuple[int, ...], "str | None"]  # (shape, safetensors dtype, or None for the weights' dtype)
INTEGER_FIELDS = ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size", "vocab_size")


class LayoutError(UserError):
    """A draft folder that cannot be read as any layout (names the file and the field)."""


class Layout:
    """One way of writing a draft folder that an engine loads: its config.json, its tensors and their names."""

    name: ClassVar[str]
    algorithm: ClassVar[str]  # the drafter whose weights it holds (draft/drafters/)
    # how its config.json is recognised: a word in one of its architectures, or a key of its own
    architecture_word: ClassVar[str] = ""
    config_key: ClassVar[str] = ""
    reads_aux_states: ClassVar[bool] = False  # its drafter reads aux hidden states (else the final state)
    sglang_refusal: ClassVar[str] = ""  # why SGLang does not serve a folder in this layout ('' when it may)

    def recognises(self, config: dict) -> bool:
        """Whether a config.json is written in this layout."""
        architectures = " ".join(config.get("architectures", []))
        return bool(self.architecture_word and self.architecture_word in architectures
                    or self.config_key and self.config_key in config)

    def body(self, config: dict) -> Any:
        """The table of a config.json that holds the decoder layer's fields."""
        return config

    def config_json(self, config: DraftConfig, dtype: str, base_model: str, k: int) -> dict[str, Any]:
        """The config.json this layout's loader reads."""
        raise NotImplementedError

    def drafter_facts(self, config: dict, body: dict) -> dict[str, Any]:
        """The facts of a config.json beyond the decoder layer's (aux ids, norms, the draft vocabulary)."""
        return {}

    def required_tensors(self, facts: dict, first_layer: str | None) -> dict[str, TensorSpec]:
        """{name: TensorSpec} the engine must find for config facts `facts`."""
        raise NotImplementedError

    def optional_tensors(self, facts: dict) -> dict[str, TensorSpec]:
        """Tensors an engine reads when present (or skips without harm), with the shape they must have."""
        return {}

    def first_layer_prefix(self, names: set[str]) -> str:
        """The name a folder gives the first decoder layer."""
        return "layers.0"

    def layout_name(self, name: str) -> str:
        """Our module's tensor name -> this layout's."""
        return name

    def our_name(self, name: str) -> str:
        """This layout's tensor name -> our module's."""
        return name


def llama_fields(config: DraftConfig, dtype: str) -> dict[str, Any]:
    """The decoder layer's fields, as a Llama (or, with q/k norms, a Qwen3) config.json gives them."""
    return {
        "model_type": LAYER_TYPES[config.qk_norm][0], "hidden_size": config.hidden_size,
        "intermediate_size": config.intermediate_size,
        "num_hidden_layers": config.num_hidden_layers, "num_attention_heads": config.num_attention_heads,
        "num_key_value_heads": config.num_key_value_heads, "head_dim": config.head_dim,
        "hidden_act": config.hidden_act, "rms_norm_eps": config.rms_norm_eps, "rope_theta": config.rope_theta,
        "rope_scaling": config.rope_scaling, "max_position_embeddings": config.max_position_embeddings,
        "vocab_size": config.vocab_size, "tie_word_embeddings": False, "attention_bias": False,
        "mlp_bias": False, "torch_dtype": dtype,
    }


def layer_facts(body: Any) -> dict[str, Any]:
    """The decoder layer's facts of a config.json table (raises LayoutError naming a missing field)."""
    if not isinstance(body, dict):
        raise LayoutError("config.json: transformer_layer_config is missing or not a table")
    missing = [k for k in INTEGER_FIELDS if not isinstance(body.get(k), int)]
    if missing:
        raise LayoutError(f"config.json: missing or non-integer field(s) {', '.join(missing)}")
    heads = body["num_attention_heads"]
    facts = {k: body[k] for k in INTEGER_FIELDS}
    facts["num_key_value_heads"] = body.get("num_key_value_heads") or heads
    facts["head_dim"] = body.get("head_dim") or body["hidden_size"] // heads
    for key, default in (("hidden_act", "silu"), ("rms_norm_eps", 1e-6), ("rope_theta", 10000.0),
                         ("rope_scaling", None), ("max_position_embeddings", 4096)):
        facts[key] = body.get(key, default)
    return facts


def decoder_layer(prefix: str, c: dict, input_width: int, input_norm: bool, hidden_norm: bool) -> dict[str, tuple]:
    """{name: shape} of one decoder layer's tensors."""
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


def aux_state_tensors(layers: dict[str, tuple], c: dict) -> dict[str, TensorSpec]:
    """A draft that reads aux states: its layers, then fc over the aux states (and their norms), the final norm,
    its LM head over the draft vocabulary, and d2t when that vocabulary is smaller."""
    out = dict(layers)
    aux, target_hidden, hidden = len(c["aux_layer_ids"]), c["target_hidden_size"], c["hidden_size"]
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


def vocabulary_tensors(c: dict) -> dict[str, TensorSpec]:
    """The optional tensors of a draft over a calibrated vocabulary: an embed_tokens copy, and t2d."""
    optional: dict[str, TensorSpec] = {"embed_tokens.weight": ((c["vocab_size"], c["hidden_size"]), None)}
    if c["draft_vocab_size"] != c["vocab_size"]:
        optional["t2d"] = ((c["vocab_size"],), "BOOL")  # never read by vLLM or SGLang; we write it for tools
    return optional


class AuxStateLayout(Layout):
    """A layout of a draft that reads aux states over a calibrated vocabulary (EAGLE-3, DFlash)."""

    reads_aux_states = True

    def optional_tensors(self, facts: dict) -> dict[str, TensorSpec]:
        return vocabulary_tensors(facts)
