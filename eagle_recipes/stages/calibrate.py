"""Calibrate: count token frequencies over the training conversations and keep the top-K as the draft vocabulary.

Counts exactly what training sees: the tokenize stage's sequence shards (one rendering, one held-out split), by
default only the tokens under the assistant loss mask, shard by shard, so memory stays flat in the data size.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from eagle_recipes.data.formats import HELD_OUT_SPLIT, TRAIN_SPLIT
from eagle_recipes.draft.drafters import drafter
from eagle_recipes.recipe import Recipe
from eagle_recipes.recipe.base_model import base_model_path
from eagle_recipes.run_folder import CALIBRATE, HELD_OUT_FOLDER, RELATIVE, TOKENIZE, RunFolder
from eagle_recipes.stages.base import Stage, StageContext

COVERAGE_WARNING = 0.95


def bincount(token_ids: np.ndarray, vocab_size: int) -> np.ndarray:
    """Counts per token id over the model's vocabulary; ids the model cannot produce (a tokenizer's added tokens
    beyond its embedding table) are not counted."""
    token_ids = np.asarray(token_ids)
    return np.bincount(token_ids[token_ids < vocab_size], minlength=vocab_size).astype(np.int64)


def count_tokens(folder: Path, vocab_size: int, count: str, progress=None) -> np.ndarray:
    """Token counts over the sequences in `folder`, shard by shard (memory-mapped: memory holds one shard's
    tokens): those under the assistant loss mask (`count = "assistant"`) or all of them."""
    from eagle_recipes.data.sequences import Sequences

    counts = np.zeros(vocab_size, dtype=np.int64)
    shards = Sequences.load(folder).shards
    for done, shard in enumerate(shards, start=1):
        ids = np.asarray(shard.ids)
        counts += bincount(ids[np.asarray(shard.mask, dtype=bool)] if count == "assistant" else ids, vocab_size)
        if progress:
            progress(done, len(shards), "sequence shards")
    return counts


class CalibrateStage(Stage):
    name = CALIBRATE
    description = "count token frequencies, keep the top-K as the draft vocabulary (d2t/t2d)"
    headline_metric = "coverage"
    reads_from = (TOKENIZE,)

    @classmethod
    def headline(cls, manifest: dict[str, Any]) -> str:
        metrics = manifest.get("metrics", {})
        held_out = metrics.get("holdout_coverage")
        return (f"{metrics.get('draft_vocab_size')} tokens, covering {metrics.get('coverage', 0):.1%} of training"
                + (f", {held_out:.1%} of held-out" if held_out is not None else ""))

    @staticmethod
    def enabled(recipe: Recipe) -> tuple[bool, str]:
        spec = drafter(recipe.draft.algorithm)
        if not spec.calibrated_vocab:
            return False, (f'draft.algorithm = "{spec.name}" ({spec.title} drafts predict over the base model\'s '
                           "whole vocabulary)")
        if recipe.vocab.draft_vocab_cache:
            return False, f"vocab.draft_vocab_cache is set (it gives the mapping: {recipe.vocab.draft_vocab_cache})"
        return True, ""


    @staticmethod
    def settings(recipe: Recipe) -> dict[str, Any]:
        return {"vocab": recipe.data["vocab"]}  # what is counted comes with the tokenize stage's fingerprint

    @staticmethod
    def outputs(recipe: Recipe) -> list[str]:
        return [*map(str, RunFolder.mapping_files(RELATIVE.stage(CALIBRATE))), str(RELATIVE.token_counts)]

    @staticmethod
    def run(ctx: StageContext) -> dict[str, Any]:
        from eagle_recipes.atomic import atomic_path
        from eagle_recipes.draft.vocab import (
            identity_mapping,
            mapping_from_ids,
            save_mapping,
            top_k_ids,
        )
        from eagle_recipes.models import base_model_facts

        recipe = ctx.recipe
        model_path = base_model_path(recipe)
        # the mapping spans the model's vocabulary (its embedding table, often padded beyond the tokenizer's ids)
        vocab_size = base_model_facts(model_path).vocab_size
        sequences = ctx.upstream[TOKENIZE]
        counts = {TRAIN_SPLIT: count_tokens(sequences, vocab_size, recipe.vocab.count, ctx.progress),
                  HELD_OUT_SPLIT: count_tokens(sequences / HELD_OUT_FOLDER, vocab_size, recipe.vocab.count)}
        train = counts[TRAIN_SPLIT]
        requested = recipe.vocab.draft_vocab_size
        distinct = int(np.count_nonzero(train))
        if requested >= vocab_size:
            mapping = identity_mapping(vocab_size)
            ctx.log(f"draft_vocab_size {requested} >= vocabulary {vocab_size}: no compression (identity mapping)")
        else:
            chosen = top_k_ids(train, requested)
            if len(chosen) < requested:
                ctx.log(f"only {distinct} distinct tokens occur in the training data, fewer than draft_vocab_size "
                        f"{requested}: the draft vocabulary is shrunk to {distinct} (tokens never seen in training "
                        "cannot be learned, and a smaller head drafts faster); add data for a larger one")
            mapping = mapping_from_ids(chosen, vocab_size)
        covered = mapping.t2d.numpy()
        coverage = {split: float(c[covered].sum() / max(1, c.sum())) for split, c in counts.items() if c.sum()}
        for split, value in coverage.items():
            if value >= COVERAGE_WARNING:
                continue
            shrunk = len(mapping.d2t) >= distinct  # every token training saw is a draft token already
            remedy = ("more (and more varied) training conversations would; a larger draft_vocab_size cannot, "
                      "since every token the training split holds is in it" if shrunk
                      else "raise vocab.draft_vocab_size")
            name = "held-out" if split == HELD_OUT_SPLIT else "training"
            ctx.log(f"warning: the draft vocabulary covers {value:.1%} of the {name} split's tokens "
                    f"(< {COVERAGE_WARNING:.0%}); {remedy}")
        save_mapping(mapping, ctx.out)
        with atomic_path(ctx.run.token_counts) as tmp, open(tmp, "wb") as handle:
            np.save(handle, train)
        return {"counts": {"tokens_counted": int(train.sum()), "distinct_tokens": distinct,
                           "holdout_tokens": int(counts[HELD_OUT_SPLIT].sum())},
                "metrics": {"draft_vocab_size": mapping.draft_vocab_size, "requested_draft_vocab_size": requested,
                            "coverage": coverage.get(TRAIN_SPLIT, 0.0), "holdout_coverage": coverage.get(HELD_OUT_SPLIT),
                            "identity": mapping.is_identity}}
