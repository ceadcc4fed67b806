"""What several stages read the same way from a recipe: where the training conversations are, how they are
rendered (and so fingerprinted), the base model, the draft vocabulary file, the draft's configuration, the
training sequences and the run's trackers. Stage modules import this, never each other."""

from __future__ import annotations

from pathlib import Path

from eagle_recipes.data.formats import is_holdout, read_conversation_jsonl
from eagle_recipes.recipe import Recipe
from eagle_recipes.run_folder import CALIBRATE, SYNTHESIZE
from eagle_recipes.trackers import TrackingSpec

SHARDS = "shards"  # synthesize/shards/*.jsonl: the conversations


def synthesizes(recipe: Recipe) -> tuple[bool, str]:
    """(does the synthesize stage run?, why not): the recipe's own conversations replace it."""
    if recipe.dataset.conversations:
        return False, "data.conversations supplies the training conversations"
    return True, ""


def calibrates(recipe: Recipe) -> tuple[bool, str]:
    """(does the calibrate stage run?, why not)."""
    if recipe.draft.algorithm == "eagle1":
        return False, "EAGLE-1 drafts predict over the base model's whole vocabulary"
    if recipe.vocab.draft_vocab_cache:
        return False, f"vocab.draft_vocab_cache gives the mapping ({recipe.vocab.draft_vocab_cache})"
    return True, ""


def conversation_files(recipe: Recipe, upstream: dict[str, Path]) -> list[Path]:
    """Conversation JSONL files holding every conversation (training and held-out): synthesize's shards when
    the recipe synthesizes, else the recipe's own data.conversations."""
    if synthesizes(recipe)[0]:
        return sorted((upstream[SYNTHESIZE] / SHARDS).glob("*.jsonl"))
    return conversation_input_files(recipe)


def conversation_input_files(recipe: Recipe) -> list[Path]:
    """The recipe's own conversation files (when it supplies them instead of synthesizing)."""
    return [recipe.resolve(p) for p in recipe.dataset.conversations]


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
    if calibrates(recipe)[0]:
        return upstream[CALIBRATE] / "d2t.pt"
    return recipe.resolve(recipe.vocab.draft_vocab_cache)


def draft_config_for(recipe: Recipe, model_path: str, draft_vocab_size: int):
    """The recipe's draft architecture for this base model (defaults + overrides + the base model's facts)."""
    from eagle_recipes.draft.config import build_draft_config
    from eagle_recipes.models import base_model_facts

    overrides = dict(recipe.draft.overrides)
    if recipe.draft.algorithm == "dflash" and overrides.get("mask_token_id") is None:
        from eagle_recipes.data.chat import mask_token_id

        overrides["mask_token_id"] = mask_token_id(load_recipe_tokenizer(recipe, model_path, None))
    return build_draft_config(recipe.draft.algorithm, overrides, base_model_facts(model_path), draft_vocab_size)


HOLDOUT = "holdout"  # the held-out split's sequences (and, in capture, their features) in this subfolder


def tokenize_training_data(recipe: Recipe, upstream: dict[str, Path], model_path: str, out: Path,
                           split: str = "train") -> int:
    """A split's sequences (data/sequences.py) in `out`, tokenized once; returns their count. Train (online) and
    capture (cached) both call this, so both see the same sequences in the same order."""
    from eagle_recipes.data.sequences import has_sequences, sequence_count, tokenize

    if not has_sequences(out):
        tokenizer = load_recipe_tokenizer(recipe, model_path, thinking_when_rendered(recipe))
        conversations = read_conversations(conversation_files(recipe, upstream), recipe, split=split)
        tokenize(tokenizer, [c["conversations"] for c in conversations], recipe.train.max_seq_len).save(out)
    return sequence_count(out)


def tracking_spec(recipe: Recipe) -> TrackingSpec:
    """What the trackers of this run need (training opens them, the evaluate stage adds to the same run)."""
    return TrackingSpec(names=list(recipe.train.report_to), folder=str(recipe.output_dir), run_name=recipe.name,
                        config=recipe.data)
