"""Sizes that plan and validate reason with: parameters of a base model from its config facts, the memory a
training worker holds in each feature mode (training/features/ adds up its parts), and the bytes the feature
cache takes.

Estimates, stated as such: weights and optimizer state are counted exactly from the shapes; activations are
estimated for one micro-batch at max_seq_len (the base forward's kept hidden states and logits, and the draft's
logits, probabilities and their gradients at every unroll step, which dominate).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from eagle_recipes.draft.config import text_config
from eagle_recipes.training.features import FEATURE_MODES, WorkerMemory, WorkerParts

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


def worker_parts(config: dict, draft_parameters: int, tokens: int, draft_vocab: int, unroll_positions: int,
                 bytes_per_token: int, dtype_bytes: int = BF16) -> WorkerParts:
    """The parts of a training worker's memory; `tokens`: one micro-batch (batch_size x max_seq_len). Each feature
    mode adds up the ones it holds (training/features/)."""
    text = text_config(config)
    hidden, vocab = text["hidden_size"], text["vocab_size"]
    return WorkerParts(
        base_weights=base_parameters(config) * dtype_bytes,
        head_weights=2 * vocab * hidden * dtype_bytes,  # embeddings + LM head
        base_activations=(text["num_hidden_layers"] + 1) * tokens * hidden * dtype_bytes + tokens * vocab * dtype_bytes,
        read_features=tokens * 4 * hidden * 4,  # the features read back, in fp32
        batch_features=tokens * bytes_per_token,
        draft=draft_parameters * TRAINED_PARAMETER_BYTES,
        draft_activations=unroll_positions * tokens * draft_vocab * 4 * 3)  # fp32 logits, probabilities, gradient


@dataclass(frozen=True)
class TrainingSizes:
    """What training costs at the recipe's size: each feature mode's memory per worker and the feature cache."""

    workers: dict[str, WorkerMemory]  # by train.features
    bytes_per_token: int  # of the feature cache
    tokens: int | None  # training tokens (None: unknown offline)
    tokens_exact: bool  # counted from the tokenized sequences (else an upper bound)

    @property
    def cache_bytes(self) -> int | None:
        return None if self.tokens is None else self.bytes_per_token * self.tokens

    def cache_fits(self, free: int) -> bool:
        """Whether the feature cache fits `free` bytes (False while its size is unknown)."""
        return self.cache_bytes is not None and self.cache_bytes <= free


def draft_parameters(draft_config) -> int:
    """Trained parameters of a draft, from its config (built on the meta device: no memory)."""
    import torch

    from eagle_recipes.draft.drafters import build_draft

    with torch.device("meta"):
        return sum(p.numel() for p in build_draft(draft_config).parameters())


def planned_conversations(recipe) -> int | None:
    """The conversations the run will train on, from what is known offline: the sources' row counts (capped by
    data.max_samples), else data.max_samples itself (how a user states the size of a Hub dataset whose rows are
    unknown offline: `plan r.toml data.max_samples=500000`), plus self prompts, once per synthesis temperature.
    None when a source's rows are unknown and no max_samples states them."""
    counts = [source.row_count() for source in recipe.prompt_sources() + recipe.conversation_sources()]
    max_samples = recipe.dataset.max_samples
    if all(count is not None for count in counts):
        rows = min(sum(counts), max_samples) if max_samples else sum(counts)
    elif max_samples:
        rows = max_samples
    else:
        return None
    temperature = recipe.synthesis.temperature
    passes = len(temperature) if isinstance(temperature, list) and not recipe.dataset.conversations else 1
    return (rows + recipe.synthesis.self_prompts) * passes


def estimated_tokens(recipe) -> tuple[int | None, bool]:
    """(training tokens, exact?): exact once the conversations are tokenized, else an upper bound (every planned
    conversation at max_seq_len); None when the conversations are not known offline."""
    from eagle_recipes.data.sequences import sequence_tokens
    from eagle_recipes.run_folder import RunFolder

    folder = RunFolder(recipe.output_dir).sequences_folder()
    if folder is not None:
        return sequence_tokens(folder), True
    conversations = planned_conversations(recipe)
    return (None if conversations is None else conversations * recipe.train.max_seq_len), False


def size_line(recipe, sizes: TrainingSizes) -> str:
    """The size the estimates are for, as plan shows it."""
    from eagle_recipes.data.sequences import sequence_count
    from eagle_recipes.run_folder import RunFolder

    if sizes.tokens_exact:
        sequences = sequence_count(RunFolder(recipe.output_dir).sequences_folder())
        return f"size: {sequences:,} sequences, {sizes.tokens:,} tokens (tokenized)"
    conversations = planned_conversations(recipe)
    if conversations is None:
        return "size: unknown offline (a source's rows are known once read; data.max_samples=N states them)"
    return (f"size: {conversations:,} conversations (the sources' rows, data.max_samples and self prompts), at most "
            f"{sizes.tokens:,} tokens (max_seq_len each)")


def training_sizes(recipe) -> TrainingSizes | None:
    """Memory per training worker (each feature mode) and the feature cache's size, for plan and validate;
    None when the base model's config cannot be read offline."""
    from eagle_recipes.data.feature_cache import bytes_per_token
    from eagle_recipes.draft.config import BaseModelFacts
    from eagle_recipes.draft.drafters import build_draft_config, drafter
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
    unroll = drafter(draft.algorithm).unroll_positions(draft, recipe.train.ttt_steps)
    parts = worker_parts(config, trained, recipe.train.batch_size * recipe.train.max_seq_len, draft.draft_vocab_size,
                         unroll, per_token)
    train = recipe.data["train"]
    return TrainingSizes(workers={name: mode.worker_memory(parts, train) for name, mode in FEATURE_MODES.items()},
                         bytes_per_token=per_token, tokens=tokens, tokens_exact=exact)


def free_disk(folder: Path) -> int:
    """Free bytes on the disk that holds `folder` (its nearest existing parent: a run folder may not exist yet)."""
    import shutil

    folder = Path(folder).resolve()
    while not folder.exists():
        folder = folder.parent
    return shutil.disk_usage(folder).free


def feature_modes(recipe, sizes: TrainingSizes) -> list[str]:
    """What each `train.features` mode costs at the recipe's size, and the one to use: feature disk, memory per
    training worker, and how often the base model runs over the data."""
    free = free_disk(recipe.output_dir)
    lines = [size_line(recipe, sizes)] + [mode.describe(recipe, sizes, free) for mode in FEATURE_MODES.values()]
    for mode in sorted(FEATURE_MODES.values(), key=lambda mode: mode.preference):
        reason = mode.recommend(recipe, sizes, free)
        if reason:
            return lines + [f"recommended: {mode.name} ({reason})"]
    return lines
