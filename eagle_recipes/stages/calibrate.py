"""Calibrate: count token frequencies over the training conversations and keep the top-K as the draft vocabulary.

Counts exactly what training sees (same chat-template rendering and tokenization), by default only the tokens
under the assistant loss mask. Runs as Ray Data `map_batches` with batched fast-tokenizer calls; each batch
becomes one bincount vector, summed at the end, so memory stays flat in the data size.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from eagle_recipes.recipe import Recipe
from eagle_recipes.stages.base import Stage, StageContext
from eagle_recipes.stages.common import (base_model_path, chat_template_file, conversation_files, split_of)

COVERAGE_WARNING = 0.95


class TokenCounter:
    """Ray Data UDF: JSONL lines -> one token-count vector per batch (per split)."""

    def __init__(self, model_path: str, template_file: str, vocab_size: int, count: str, max_len: int,
                 holdout_fraction: float):
        from eagle_recipes.data.chat import load_tokenizer

        self.tokenizer = load_tokenizer(model_path, template_file)
        self.vocab_size, self.count, self.max_len = vocab_size, count, max_len
        self.holdout_fraction = holdout_fraction

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        import json

        from eagle_recipes.data.chat import render_batch
        from eagle_recipes.data.formats import is_holdout

        rows = [json.loads(text) for text in batch["text"] if text.strip()]
        result = {}
        for split in ("train", "holdout"):
            chosen = [r["conversations"] for r in rows
                      if is_holdout(r["conversation_id"], self.holdout_fraction) == (split == "holdout")]
            counts = np.zeros(self.vocab_size, dtype=np.int64)
            for rendered in render_batch(self.tokenizer, chosen, self.max_len, with_mask=self.count == "assistant"):
                ids = np.asarray(rendered.input_ids, dtype=np.int64)
                counts += np.bincount(ids[np.asarray(rendered.loss_mask, dtype=bool)], minlength=self.vocab_size)
            result[split] = counts[None, :]
        return result


def count_tokens(files: list[Path], model_path: str, template_file: str, vocab_size: int, count: str,
                 max_len: int, holdout_fraction: float, batch_size: int = 256, workers: int = 2,
                 progress=None) -> dict[str, np.ndarray]:
    import ray

    dataset = ray.data.read_text([str(f) for f in files])
    counted = dataset.map_batches(
        TokenCounter, batch_size=batch_size, concurrency=workers, num_cpus=1, batch_format="numpy",
        fn_constructor_kwargs=dict(model_path=model_path, template_file=template_file, vocab_size=vocab_size,
                                   count=count, max_len=max_len, holdout_fraction=holdout_fraction))
    totals = {"train": np.zeros(vocab_size, dtype=np.int64), "holdout": np.zeros(vocab_size, dtype=np.int64)}
    batches = 0
    for batch in counted.iter_batches(batch_size=None, batch_format="numpy"):
        for split in totals:
            totals[split] += batch[split].sum(axis=0)
        batches += 1
        if progress:
            progress(batches, None, "batches")
    return totals


class CalibrateStage(Stage):
    name = "calibrate"
    description = "count token frequencies, keep the top-K as the draft vocabulary (d2t/t2d)"

    @staticmethod
    def enabled(recipe: Recipe) -> tuple[bool, str]:
        if recipe.vocab.draft_vocab_cache:
            return False, f"vocab.draft_vocab_cache gives the mapping ({recipe.vocab.draft_vocab_cache})"
        return True, ""

    @staticmethod
    def depends_on(recipe: Recipe, enabled: set[str]) -> list[str]:
        return ["synthesize"] if "synthesize" in enabled else []

    @staticmethod
    def settings(recipe: Recipe) -> dict[str, Any]:
        return {"vocab": recipe.data["vocab"], "model": recipe.data["model"],
                "max_seq_len": recipe.train.max_seq_len, "holdout_fraction": recipe.inputs.holdout_fraction}

    @staticmethod
    def input_files(recipe: Recipe) -> list[Path]:
        return [recipe.resolve(p) for p in recipe.inputs.conversations]

    @staticmethod
    def outputs(recipe: Recipe) -> list[str]:
        return ["calibrate/d2t.pt", "calibrate/t2d.pt", "calibrate/counts.npy"]

    @staticmethod
    def resources(recipe: Recipe) -> dict[str, Any]:
        return {"driver": {"num_cpus": 0.1}, "ray_data": "2 tokenizer actors x 1 CPU"}

    @staticmethod
    def run(ctx: StageContext) -> dict[str, Any]:
        from eagle_recipes.atomic import atomic_path
        from eagle_recipes.data.chat import load_tokenizer
        from eagle_recipes.draft.vocab import identity_mapping, mapping_from_ids, save_mapping, top_k_ids
        from eagle_recipes.models import load_base_config

        recipe = ctx.recipe
        model_path = base_model_path(recipe)
        # the embedding table may be padded beyond the tokenizer's ids: the mapping spans the model's vocabulary
        vocab_size = max(len(load_tokenizer(model_path, chat_template_file(recipe))),
                         load_base_config(model_path)["vocab_size"])
        files = conversation_files(recipe, ctx.inputs)
        counts = count_tokens(files, model_path, chat_template_file(recipe), vocab_size, recipe.vocab.count,
                              recipe.train.max_seq_len, recipe.inputs.holdout_fraction, progress=ctx.progress)
        train = counts["train"]
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
            if value < COVERAGE_WARNING:
                ctx.log(f"warning: the draft vocabulary covers only {value:.1%} of {split} tokens "
                        f"(< {COVERAGE_WARNING:.0%}); raise vocab.draft_vocab_size")
        save_mapping(mapping, ctx.out)
        with atomic_path(ctx.out / "counts.npy") as tmp, open(tmp, "wb") as handle:
            np.save(handle, train)
        return {"counts": {"tokens_counted": int(train.sum()), "distinct_tokens": distinct,
                           "holdout_tokens": int(counts["holdout"].sum()), "files": len(files)},
                "metrics": {"draft_vocab_size": mapping.draft_vocab_size, "requested_draft_vocab_size": requested,
                            "coverage": coverage.get("train", 0.0), "holdout_coverage": coverage.get("holdout"),
                            "identity": mapping.is_identity}}
