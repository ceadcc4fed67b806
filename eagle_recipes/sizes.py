"""Sizes that plan and validate reason with: parameters of a base model from its config facts, the memory a
training worker needs online and cached, and the bytes the feature cache takes.

Estimates, stated as such: weights and optimizer state are counted exactly from the shapes; activations are
estimated for one micro-batch at max_seq_len (the base forward's kept hidden states and logits, and the draft's
logits, probabilities and their gradients at every unroll step, which dominate).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

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
    if size >= 1024 * GiB:
        return f"{size / 1024 / GiB:.1f} TiB"
    return f"{size / GiB:.1f} GiB" if size >= GiB / 10 else f"{size / 1024 ** 2:.0f} MiB"


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


def size_line(recipe, sizes: dict) -> str:
    """The size the estimates are for, as plan shows it."""
    from eagle_recipes.data.sequences import sequence_count
    from eagle_recipes.run_folder import RunFolder

    if sizes["tokens_exact"]:
        sequences = sequence_count(RunFolder(recipe.output_dir).sequences_folder())
        return f"size: {sequences:,} sequences, {sizes['tokens']:,} tokens (tokenized)"
    conversations = planned_conversations(recipe)
    if conversations is None:
        return "size: unknown offline (a source's rows are known once read; data.max_samples=N states them)"
    return (f"size: {conversations:,} conversations (the sources' rows, data.max_samples and self prompts), at most "
            f"{sizes['tokens']:,} tokens (max_seq_len each)")


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
            "bytes_per_token": per_token, "tokens": tokens, "tokens_exact": exact,
            "cache_bytes": None if tokens is None else per_token * tokens}


def free_disk(folder: Path) -> int:
    """Free bytes on the disk that holds `folder` (its nearest existing parent: a run folder may not exist yet)."""
    import shutil

    folder = Path(folder).resolve()
    while not folder.exists():
        folder = folder.parent
    return shutil.disk_usage(folder).free


def online_fits(recipe, sizes: dict) -> bool:
    """Whether a worker holding the whole base model fits its accelerator (a CPU worker: not checked)."""
    return not recipe.train.use_gpu or sizes["online"].total <= recipe.train.accelerator_memory_gb * 1e9


def cache_fits(sizes: dict, free: int) -> bool:
    """Whether the feature cache fits `free` bytes (False while its size is unknown)."""
    return sizes["cache_bytes"] is not None and sizes["cache_bytes"] <= free


def feature_modes(recipe, sizes: dict) -> list[str]:
    """What each `train.features` mode costs at the recipe's size, and the one to use: feature disk, memory per
    training worker, and how often the base model runs over the data."""
    online, cached, bytes_ = sizes["online"], sizes["cached"], sizes["cache_bytes"]
    epochs, free = recipe.train.epochs, free_disk(recipe.output_dir)
    bound = "" if sizes["tokens_exact"] else "at most "
    disk = "unknown (set data.max_samples to the conversations you plan)" if bytes_ is None else f"{bound}{gib(bytes_)}"
    lines = [size_line(recipe, sizes),
             f"online: no feature disk, {gib(online.total)} per worker, the base model in every worker and run "
             f"forward over the data every epoch ({epochs} epoch{'s' if epochs > 1 else ''})",
             f"cached: {disk} of feature disk ({sizes['bytes_per_token']:,} B a token; {gib(free)} free under "
             f"output_dir), {gib(cached.total)} per worker, the base model run once (capture)",
             f"streamed: no feature disk, {gib(streamed_worker_bytes(recipe, sizes))} per worker (the cached worker's, "
             f"{recipe.train.stream_in_flight} batches in flight and the stream cache), {recipe.capture.replicas} "
             f"feature server{'s' if recipe.capture.replicas > 1 else ''} running the base model over the data every "
             f"epoch"]
    if cache_fits(sizes, free):
        lines.append("recommended: cached (it fits the disk; no base model in the workers, one forward pass in all)")
    elif online_fits(recipe, sizes):
        lines.append("recommended: online (the feature cache would not fit the disk under output_dir)"
                     if bytes_ is not None else "recommended: online (the feature cache's size is not known)")
    else:
        lines.append("recommended: streamed (online needs more than train.accelerator_memory_gb per GPU and the "
                     "cache more than the free disk)")
    return lines


def streamed_worker_bytes(recipe, sizes: dict) -> int:
    """A streamed worker holds what a cached one holds, plus the features of the batches it asked for ahead and
    its stream cache."""
    batch_features = recipe.train.batch_size * recipe.train.max_seq_len * sizes["bytes_per_token"]
    return (sizes["cached"].total + recipe.train.stream_in_flight * batch_features
            + int(recipe.train.stream_cache_gib * 2**30))
