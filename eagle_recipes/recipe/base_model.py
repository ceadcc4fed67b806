"""The recipe's base model as the stages use it: where it is, its tokenizer and chat template, and which recipe
settings decide how conversations are rendered with it (part of every fingerprint that renders them)."""

from __future__ import annotations

from eagle_recipes.data.formats import HELD_OUT_RULE
from eagle_recipes.recipe.view import Recipe


def base_model_path(recipe: Recipe) -> str:
    from eagle_recipes.models import resolve_model

    return resolve_model(recipe.model.path, recipe.folder)


def chat_template_file(recipe: Recipe) -> str:
    return str(recipe.resolve(recipe.model.chat_template)) if recipe.model.chat_template else ""


def load_recipe_tokenizer(recipe: Recipe, model_path: str, thinking: bool | None):
    from eagle_recipes.data.chat import load_tokenizer

    return load_tokenizer(model_path, chat_template_file(recipe), recipe.model.trust_remote_code, thinking)


def thinking_when_rendered(recipe: Recipe) -> bool | None:
    """The template switch for rendering stored conversations (calibrate, capture, training): off when the
    thinking was stripped or disabled; else the template's default."""
    return None if recipe.synthesis.reasoning == "keep" else False


def thinking_when_generating(recipe: Recipe) -> bool | None:
    """The template switch when the base model answers (synthesis, evaluation)."""
    return False if recipe.synthesis.reasoning == "disable" else None


def reasoning_setting(recipe: Recipe) -> dict:
    """synthesis.reasoning for the fingerprints of stages that render or generate with it; empty on the default,
    so that runs from before the setting existed stay up to date."""
    reasoning = recipe.synthesis.reasoning
    return {} if reasoning == "keep" else {"reasoning": reasoning}


def rendering_settings(recipe: Recipe) -> dict:
    """The recipe fields that decide how conversations become token ids, loss masks and splits (part of the
    fingerprint of every stage that reads the conversations so)."""
    return {"model": recipe.data["model"], "max_seq_len": recipe.train.max_seq_len, **split_settings(recipe),
            **reasoning_setting(recipe)}


def split_settings(recipe: Recipe) -> dict:
    """What decides which conversations are held out (part of the fingerprint of every stage that reads a split)."""
    return {"holdout_fraction": recipe.dataset.holdout_fraction, "held_out": HELD_OUT_RULE}
