"""A tiny base model of a catalog entry's own architecture: the Hugging Face class its `configs/*.json` names, with
random weights, shrunk to a few layers and a small width but with the family's structural features kept (attention
kind and GQA ratio, head_dim against hidden/heads, q/k norms, biases and fused projections of the class, MoE experts
and routing, rope type and scaling, tied or untied embeddings, sliding windows), and the tokenizer this machine
has (SmolLM2's), the vocabulary sized to it. `eagle-recipes catalog check` runs an entry's recipe on it.

Random weights alone make a base whose greedy replies a small draft cannot learn in a few hundred steps: its top
token wanders over 49k ids. So a few hundred ids (words of ordinary English) get LM-head rows scaled up: the base
then chooses among them, a calibrated draft vocabulary holds its choices, and which one it picks still hangs on
the hidden state, that is on the exact layers a draft reads.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

NUM_LAYERS = 8  # the default aux layers (2, L//2, L-3) are then three different layers: 2, 4, 5
HEAD_DIM = 32  # the smallest head vLLM's CPU attention serves
EXPERTS, EXPERTS_PER_TOKEN = 4, 2
CHOSEN_WORDS = (
    "the of and to in is that it was for on are as with his they at be this from have or by one had not but what "
    "all were when we there can an your which their said if do will each about how up out them then she many some "
    "so these would other into has more her two like him see time could no make than first been its who now people "
    "my made over did down only way find use may water long little very after words called just where most know "
    "get through back much before go good new write our used me man too any day same right look think also around "
    "another came come work three word must because does part even place well such here take why things help put "
    "years different away again off went old number great tell men say small every found still between name should "
    "home big give air line set own under read last never us left end along while might next sound below saw "
    "something thought both few those always looked show large often together asked house world going want school "
    "important until form food keep children feet land side without boy once animals life enough took sometimes "
    "four head above kind began almost live page got earth need far hand high year mother light parts country "
    "father let night following picture being study second eyes soon times story boys since white days ever paper "
    "hard near sentence better best across during today others however sure means knew its try told young miles "
    "sun ways thing whole hear example heard several change answer room sea against top turned learn point city "
    "play toward five using himself usually money seen car morning")
HEAD_SCALE = 3.0  # the chosen words' LM-head rows, times this: the base picks among them
# weights drawn 15x wider than transformers' 0.02: at 0.02 a tiny random base repeats one word (its reply is a
# function of the last token alone, which a draft learns from the token, whatever features it is fed); at 0.3
# each reply wanders over the chosen words as the whole context has it
INITIALIZER_RANGE = 0.3


@dataclass(frozen=True)
class TinyShape:
    """What a tiny base keeps of its family's shape (read off the full config)."""

    heads: int
    kv_heads: int
    head_dim: int
    hidden: int


def tiny_shape(config: dict[str, Any]) -> TinyShape:
    """The GQA ratio and head_dim's relation to hidden/heads of the full config, at HEAD_DIM-wide heads and one or
    two kv heads (a 7:1 ratio stays 7:1, a head_dim twice hidden/heads stays twice)."""
    heads = int(config["num_attention_heads"])
    kv_heads = int(config.get("num_key_value_heads") or heads)
    ratio = max(1, heads // kv_heads)
    tiny_kv = 2 if ratio <= 2 else 1
    tiny_heads = ratio * tiny_kv
    full_head_dim = int(config.get("head_dim") or config["hidden_size"] // heads)
    head_dim_over_width = full_head_dim / (config["hidden_size"] / heads)
    hidden = round(tiny_heads * HEAD_DIM / head_dim_over_width)
    return TinyShape(tiny_heads, tiny_kv, HEAD_DIM, hidden)


def shrink_config(config: dict[str, Any], vocab_size: int, special_ids: dict[str, int]) -> dict[str, Any]:
    """The full config with its sizes made tiny; every other field (rope scaling, biases, window, tying, MoE routing)
    as the family has it."""
    shape = tiny_shape(config)
    tiny = dict(config)
    tiny.update(num_hidden_layers=NUM_LAYERS, hidden_size=shape.hidden, num_attention_heads=shape.heads,
                num_key_value_heads=shape.kv_heads, head_dim=shape.head_dim, intermediate_size=2 * shape.hidden,
                vocab_size=vocab_size, initializer_range=INITIALIZER_RANGE, dtype="float32", **special_ids)
    if config.get("num_experts"):  # a mixture of experts stays one, routing top-k of a few
        tiny.update(num_experts=EXPERTS, num_experts_per_tok=EXPERTS_PER_TOKEN, moe_intermediate_size=shape.hidden)
    if isinstance(config.get("layer_types"), list):  # per-layer attention kinds (sliding / full), in their pattern
        pattern = config["layer_types"]
        tiny["layer_types"] = [pattern[i % len(pattern)] for i in range(NUM_LAYERS)]
    if "max_window_layers" in config:
        tiny["max_window_layers"] = min(int(config["max_window_layers"]), NUM_LAYERS)
    return tiny


def build_tiny_base(config_path: Path, tokenizer_path: str, folder: Path, seed: int = 0) -> Path:
    """Write the tiny base (safetensors, config, tokenizer) to `folder`; the same seed writes the same weights."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    full = json.loads(Path(config_path).read_text(encoding="utf-8"))
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_path)
    special = {"bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id,
               "pad_token_id": tokenizer.pad_token_id}
    tiny = shrink_config(full, len(tokenizer), {k: v for k, v in special.items() if v is not None})
    model_type = tiny.pop("model_type")
    tiny.pop("architectures", None)
    config = AutoConfig.for_model(model_type, **tiny)
    config.architectures = full.get("architectures")
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    _favour_chosen_words(model, tokenizer)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def _favour_chosen_words(model, tokenizer) -> None:
    import torch

    chosen = sorted({ids[0] for word in CHOSEN_WORDS.split()
                     if len(ids := tokenizer.encode(" " + word, add_special_tokens=False)) == 1})
    with torch.no_grad():
        model.get_output_embeddings().weight[chosen] *= HEAD_SCALE
