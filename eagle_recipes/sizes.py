"""Sizes that plan and validate reason with: parameters of a base model from its config facts, the memory a
training worker needs online and cached, and the bytes the feature cache takes.

Estimates, stated as such: weights and optimizer state are counted exactly from the shapes; activations are
estimated for one micro-batch at max_seq_len (the base forward's kept hidden states and logits, and the draft's
logits, probabilities and their gradients at every unroll step, which dominate).
"""

from __future__ import annotations

from dataclasses import dataclass

from eagle_recipes.draft.config import text_config

GiB = 1024 ** 3
BF16 = 2
# a trained parameter in mixed precision: fp32 weight, fp32 gradient, two fp32 Adam moments
TRAINED_PARAMETER_BYTES = 16


def base_parameters(config: dict) -> int:
    """Parameters of a decoder-only base model (dense or mixture-of-experts), from its config.json facts."""
    text = text_config(config)
    hidden, layers, vocab = text["hidden_size"], text["num_hidden_layers"], text["vocab_size"]
    heads = text["num_attention_heads"]
    kv_heads = text.get("num_key_value_heads") or heads
    head_dim = text.get("head_dim") or hidden // heads
    attention = hidden * head_dim * (2 * heads + 2 * kv_heads)  # q, o and k, v
    experts = text.get("num_experts") or text.get("n_routed_experts") or 0
    if experts:
        mlp = experts * 3 * hidden * text["moe_intermediate_size"] + hidden * experts  # experts + router
    else:
        mlp = 3 * hidden * text["intermediate_size"]
    tied = bool(config.get("tie_word_embeddings", text.get("tie_word_embeddings", False)))
    embeddings = vocab * hidden * (1 if tied else 2)
    return layers * (attention + mlp + 2 * hidden) + embeddings + hidden


@dataclass(frozen=True)
class WorkerMemory:
    """Bytes a training worker holds before activations."""

    base: int  # the frozen base model (online) or its embeddings and LM head (cached)
    draft: int  # the draft with its gradients and optimizer state
    activations: int  # one micro-batch at max_seq_len (estimate)

    @property
    def total(self) -> int:
        return self.base + self.draft + self.activations


def worker_memory(config: dict, draft_parameters: int, features: str, tokens: int, draft_vocab: int,
                  ttt_steps: int, dtype_bytes: int = BF16) -> WorkerMemory:
    """`tokens`: one micro-batch (batch_size x max_seq_len)."""
    text = text_config(config)
    hidden, vocab = text["hidden_size"], text["vocab_size"]
    draft_activations = ttt_steps * tokens * draft_vocab * 4 * 3  # fp32 logits, probabilities, gradient
    if features == "cached":
        base = 2 * vocab * hidden * dtype_bytes  # embeddings + LM head
        base_activations = tokens * 4 * hidden * 4  # the features read back, in fp32
    else:
        base = base_parameters(config) * dtype_bytes
        base_activations = (text["num_hidden_layers"] + 1) * tokens * hidden * dtype_bytes + tokens * vocab * dtype_bytes
    return WorkerMemory(base=base, draft=draft_parameters * TRAINED_PARAMETER_BYTES,
                        activations=base_activations + draft_activations)


def draft_parameters(draft_config) -> int:
    """Trained parameters of a draft, from its config (built on the meta device: no memory)."""
    import torch

    from eagle_recipes.draft.drafters import build_draft

    with torch.device("meta"):
        return sum(p.numel() for p in build_draft(draft_config).parameters())


def gib(size: float) -> str:
    return f"{size / GiB:.1f} GiB" if size >= GiB / 10 else f"{size / 1024 ** 2:.0f} MiB"


def estimated_tokens(recipe) -> tuple[int, bool]:
    """(training tokens, exact?): exact once the conversations are tokenized, else an upper bound (every
    conversation at max_seq_len; conversations counted from the prompt files plus self prompts)."""
    from eagle_recipes.data.sequences import sequence_offsets
    from eagle_recipes.run_folder import RunFolder

    folder = RunFolder(recipe.output_dir).sequences_folder()
    if folder is not None:
        return int(sequence_offsets(folder)[-1]), True
    rows = recipe.synthesis.self_prompts
    for source in recipe.prompt_sources() + recipe.conversation_sources():
        rows += source.row_count() or 0  # unknown until read: not counted
    return rows * recipe.train.max_seq_len, False


def training_sizes(recipe) -> dict | None:
    """Memory per training worker (online and cached) and the feature cache's size, for plan and validate;
    None when the base model's config cannot be read offline."""
    from eagle_recipes.data.feature_cache import bytes_per_token
    from eagle_recipes.draft.config import BaseModelFacts
    from eagle_recipes.draft.drafters import build_draft_config
    from eagle_recipes.models import load_base_config

    try:
        config = load_base_config(recipe.model.path, recipe.model.config, recipe.folder)
        facts = BaseModelFacts.from_config(config)
        draft = build_draft_config(recipe.draft.algorithm, recipe.draft.overrides, facts,
                                   min(recipe.vocab.draft_vocab_size, facts.vocab_size))
    except Exception:  # plan and validate report an unreadable config elsewhere, with its own message
        return None
    trained = draft_parameters(draft)
    stored = {"float32": 4, "bfloat16": 2, "float16": 2}[recipe.capture.dtype]
    per_token = bytes_per_token(facts.hidden_size, len(draft.aux_layer_ids), stored, draft.algorithm)
    tokens, exact = estimated_tokens(recipe)
    batch = (recipe.train.batch_size * recipe.train.max_seq_len, draft.draft_vocab_size, recipe.train.ttt_steps)
    return {"online": worker_memory(config, trained, "online", *batch),
            "cached": worker_memory(config, trained, "cached", *batch),
            "bytes_per_token": per_token, "tokens": tokens, "tokens_exact": exact, "cache_bytes": per_token * tokens}
