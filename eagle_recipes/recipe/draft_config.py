"""The recipe's draft: its architecture for this base model (defaults, the recipe's overrides, the base model's
facts), where its draft vocabulary comes from, and the capture engine that computes the features it reads."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from eagle_recipes.recipe.base_model import load_recipe_tokenizer
from eagle_recipes.recipe.view import Recipe
from eagle_recipes.run_folder import CALIBRATE, D2T_FILE

if TYPE_CHECKING:
    from eagle_recipes.engines.capture import CaptureSpec


def vocab_file(recipe: Recipe, upstream: dict[str, Path]) -> Path:
    """The draft vocabulary's d2t file: calibrate's when the graph holds it, else the recipe's
    vocab.draft_vocab_cache."""
    if CALIBRATE in upstream:
        return upstream[CALIBRATE] / D2T_FILE
    return recipe.resolve(recipe.vocab.draft_vocab_cache)


def draft_config_for(recipe: Recipe, model_path: str, draft_vocab_size: int):
    """The recipe's draft architecture for this base model (defaults + overrides + the base model's facts)."""
    from eagle_recipes.draft.drafters import build_draft_config, drafter
    from eagle_recipes.models import base_model_facts

    overrides = dict(recipe.draft.overrides)
    if drafter(recipe.draft.algorithm).needs_mask_token and overrides.get("mask_token_id") is None:
        from eagle_recipes.data.chat import mask_token_id

        overrides["mask_token_id"] = mask_token_id(load_recipe_tokenizer(recipe, model_path, None))
    return build_draft_config(recipe.draft.algorithm, overrides, base_model_facts(model_path), draft_vocab_size)


def capture_spec(recipe: Recipe, model_path: str, data_folder: Path, out: Path | str = "") -> CaptureSpec:
    """The recipe's capture engine over the sequences in `data_folder`, writing into `out` (the capture stage's;
    streamed training's feature servers write nothing and read the folder each request names)."""
    from eagle_recipes.engines.capture import CaptureSpec  # noqa: F811 - the class itself, at run time

    draft_config = draft_config_for(recipe, model_path, draft_vocab_size=1)
    return CaptureSpec(model_path=model_path, data_folder=str(data_folder), out=str(out),
                       algorithm=recipe.draft.algorithm, aux_layer_ids=tuple(draft_config.aux_layer_ids),
                       dtype=recipe.capture.dtype, engine=recipe.capture.engine,
                       tensor_parallel_size=recipe.capture.tensor_parallel_size,
                       trust_remote_code=recipe.model.trust_remote_code)
