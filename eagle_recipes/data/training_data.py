"""A run's training conversations and the sequences made from them: where the conversations are (synthesize's
shards, or the recipe's own files), one split of them, and their tokenized sequences. Train (online) and capture
(cached) both tokenize through here, so both see the same sequences in the same order."""

from __future__ import annotations

from pathlib import Path

from eagle_recipes.data.formats import TRAIN_SPLIT, read_conversation_jsonl, split_of
from eagle_recipes.recipe.base_model import load_recipe_tokenizer, thinking_when_rendered
from eagle_recipes.recipe.view import Recipe
from eagle_recipes.run_folder import CONVERSATION_SHARDS, SYNTHESIZE


def conversation_files(recipe: Recipe, upstream: dict[str, Path]) -> list[Path]:
    """Conversation JSONL files holding every conversation (training and held-out): synthesize's shards when
    the graph holds the synthesize stage, else the recipe's own data.conversations."""
    if SYNTHESIZE in upstream:
        return sorted((upstream[SYNTHESIZE] / CONVERSATION_SHARDS).glob("*.jsonl"))
    return conversation_input_files(recipe)


def conversation_input_files(recipe: Recipe) -> list[Path]:
    """The recipe's own conversation files (when it supplies them instead of synthesizing)."""
    return [recipe.resolve(p) for p in recipe.dataset.conversations]


def read_conversations(files: list[Path], recipe: Recipe, split: str | None = TRAIN_SPLIT) -> list[dict]:
    """The conversations of one split (every one with None)."""
    fraction = recipe.dataset.holdout_fraction
    return [row for row in read_conversation_jsonl(files)
            if split is None or split_of(row["conversation_id"], fraction) == split]


def tokenize_training_data(recipe: Recipe, upstream: dict[str, Path], model_path: str, out: Path,
                           split: str = TRAIN_SPLIT) -> int:
    """A split's sequences (data/sequences.py) in `out`, tokenized once; returns their count. Train (online) and
    capture (cached) both call this, so both see the same sequences in the same order."""
    from eagle_recipes.data.sequences import has_sequences, sequence_count, tokenize

    if not has_sequences(out):
        tokenizer = load_recipe_tokenizer(recipe, model_path, thinking_when_rendered(recipe))
        conversations = read_conversations(conversation_files(recipe, upstream), recipe, split=split)
        tokenize(tokenizer, [c["conversations"] for c in conversations], recipe.train.max_seq_len).save(out)
    return sequence_count(out)
