"""A run's training conversations and the sequences made from them: where the conversations are (synthesize's
shards, or the recipe's own data.conversations), one split of them, and their tokenized sequences in one process
(what benchmarks and tests build runs from; the graph's tokenize stage writes the same sequences in shards, in
parallel)."""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

from eagle_recipes.data.formats import TRAIN_SPLIT, read_conversation_rows, split_of
from eagle_recipes.data.sources import FileSource, Source
from eagle_recipes.recipe.base_model import load_recipe_tokenizer, thinking_when_rendered
from eagle_recipes.recipe.view import Recipe
from eagle_recipes.run_folder import CONVERSATION_SHARDS, SYNTHESIZE


def conversation_sources(recipe: Recipe, upstream: dict[str, Path]) -> list[Source]:
    """The sources holding every conversation (training and held-out): synthesize's shards when the graph holds
    the synthesize stage, else the recipe's own data.conversations."""
    if SYNTHESIZE in upstream:
        shards = sorted((upstream[SYNTHESIZE] / CONVERSATION_SHARDS).glob("*.jsonl"))
        return [FileSource(shard, f"{SYNTHESIZE} shard") for shard in shards]
    return recipe.conversation_sources()


def conversation_input_files(recipe: Recipe) -> list[Path]:
    """The files the recipe's own conversations are read from (what a stage reading them is fingerprinted on)."""
    return [file for source in recipe.conversation_sources() for file in source.input_files()]


def iter_conversations(sources: list[Source], recipe: Recipe, split: str | None = TRAIN_SPLIT) -> Iterator[dict]:
    """The conversations of one split (every one with None), streamed from the sources."""
    fraction = recipe.dataset.holdout_fraction
    return (row for row in read_conversation_rows(sources) if split is None or split_of(row, fraction) == split)


def read_conversations(sources: list[Source], recipe: Recipe, split: str | None = TRAIN_SPLIT) -> list[dict]:
    """The conversations of one split (every one with None), as a list."""
    return list(iter_conversations(sources, recipe, split))


def tokenize_training_data(recipe: Recipe, upstream: dict[str, Path], model_path: str, out: Path,
                           split: str = TRAIN_SPLIT) -> int:
    """A split's sequences (data/sequences.py) in `out`, tokenized once in this process as one shard; returns
    their count (the same sequences, in the same order, as the tokenize stage's shards)."""
    from eagle_recipes.data.sequences import has_sequences, sequence_count, write_tokenized

    if not has_sequences(out):
        tokenizer = load_recipe_tokenizer(recipe, model_path, thinking_when_rendered(recipe))
        rows = iter_conversations(conversation_sources(recipe, upstream), recipe, split=split)
        write_tokenized(tokenizer, (row["conversations"] for row in rows), recipe.train.max_seq_len, out)
    return sequence_count(out)
