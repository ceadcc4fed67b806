"""Helpers shared by stages: where the training conversations are, the base model, the vocabulary mapping."""

from __future__ import annotations

import os
from pathlib import Path

from eagle_recipes.data.formats import is_holdout, read_conversation_jsonl
from eagle_recipes.recipe import Recipe

SHARDS = "shards"


def conversation_files(recipe: Recipe, upstream: dict[str, Path]) -> list[Path]:
    """Conversation JSONL files holding every conversation (training and held-out): synthesize's shards when
    the recipe synthesizes, else the recipe's own data.conversations."""
    from eagle_recipes.stages.synthesize import SynthesizeStage

    if SynthesizeStage.enabled(recipe)[0]:
        return sorted((upstream["synthesize"] / SHARDS).glob("*.jsonl"))
    return conversation_input_files(recipe)


def rendering_settings(recipe: Recipe) -> dict:
    """The recipe fields that decide how conversations become token ids, loss masks and splits (part of the
    fingerprint of every stage that reads the conversations so)."""
    return {"model": recipe.data["model"], "max_seq_len": recipe.train.max_seq_len,
            "holdout_fraction": recipe.dataset.holdout_fraction, **reasoning_setting(recipe)}


def reasoning_setting(recipe: Recipe) -> dict:
    """synthesis.reasoning for the fingerprints of stages that render or generate with it; empty on the default,
    so that runs from before the setting existed stay up to date."""
    reasoning = recipe.synthesis.reasoning
    return {} if reasoning == "keep" else {"reasoning": reasoning}


def thinking_when_rendered(recipe: Recipe) -> bool | None:
    """The template switch for rendering stored conversations (calibrate, capture, training): off when the
    thinking was stripped or disabled; else the template's default."""
    return None if recipe.synthesis.reasoning == "keep" else False


def thinking_when_generating(recipe: Recipe) -> bool | None:
    """The template switch when the base model answers (synthesis, evaluation)."""
    return False if recipe.synthesis.reasoning == "disable" else None


def load_recipe_tokenizer(recipe: Recipe, model_path: str, thinking: bool | None):
    from eagle_recipes.data.chat import load_tokenizer

    return load_tokenizer(model_path, chat_template_file(recipe), recipe.model.trust_remote_code, thinking)


def conversation_input_files(recipe: Recipe) -> list[Path]:
    """The recipe's own conversation files (when it supplies them instead of synthesizing)."""
    return [recipe.resolve(p) for p in recipe.dataset.conversations]


def split_of(conversation: dict, recipe: Recipe) -> str:
    return "holdout" if is_holdout(conversation["conversation_id"], recipe.dataset.holdout_fraction) else "train"


def read_conversations(files: list[Path], recipe: Recipe, split: str | None = "train") -> list[dict]:
    return [row for row in read_conversation_jsonl(files) if split is None or split_of(row, recipe) == split]


def base_model_path(recipe: Recipe) -> str:
    from eagle_recipes.models import resolve_model

    return resolve_model(recipe.model.path, recipe.folder)


def chat_template_file(recipe: Recipe) -> str:
    return str(recipe.resolve(recipe.model.chat_template)) if recipe.model.chat_template else ""


def vocab_file(recipe: Recipe, upstream: dict[str, Path]) -> Path:
    """The d2t.pt of the draft vocabulary: calibrate's when it runs, else the recipe's vocab.draft_vocab_cache."""
    from eagle_recipes.stages.calibrate import CalibrateStage

    if CalibrateStage.enabled(recipe)[0]:
        return upstream["calibrate"] / "d2t.pt"
    return recipe.resolve(recipe.vocab.draft_vocab_cache)


def torch_threads(cpus: float) -> int:
    """Threads for torch inside a worker: the CPUs Ray gave it, never more (oversubscription is ~8x slower)."""
    return max(1, min(int(cpus), os.cpu_count() or 1))
