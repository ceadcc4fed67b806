"""A run's training conversations: where they are (synthesize's shards, or the recipe's own data.conversations)
and one split of them. The tokenize stage turns them into sequences."""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

from eagle_recipes.data.formats import TRAIN_SPLIT, read_conversation_rows, split_of
from eagle_recipes.data.sources import FileSource, Source
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

