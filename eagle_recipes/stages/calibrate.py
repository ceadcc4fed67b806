"""Calibrate: count token frequencies over the training conversations and keep the top-K as the draft vocabulary.

Counts exactly what training sees (same chat-template rendering and tokenization), by default only the tokens
under the assistant loss mask. Each batch of conversations becomes one count vector, summed at the end, so memory
stays flat in the data size (plus the token ids of each distinct pre-token piece, which grow far slower). Large
data is counted by Ray Data `map_batches` actors; small data in-process (see `count_tokens`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from eagle_recipes.data.formats import HELD_OUT_SPLIT, TRAIN_SPLIT
from eagle_recipes.data.pretokens import bincount
from eagle_recipes.data.training_data import conversation_files, conversation_input_files
from eagle_recipes.draft.drafters import drafter
from eagle_recipes.recipe import Recipe
from eagle_recipes.recipe.base_model import base_model_path, chat_template_file, rendering_settings, thinking_when_rendered
from eagle_recipes.run_folder import CALIBRATE, RELATIVE, SYNTHESIZE, RunFolder
from eagle_recipes.stages.base import Stage, StageContext

COVERAGE_WARNING = 0.95
# below this much conversation data, counting in-process beats starting Ray Data's actors
RAY_DATA_MIN_BYTES = 128 << 20


class TokenCounter:
    """Counts the tokens of conversations (JSONL lines) as training renders and masks them: one count vector per
    split and batch.

    For byte-level BPE tokenizers each distinct pre-token piece is tokenized once and its count multiplied
    (data/pretokens.py); the conversations that piece-counting cannot settle exactly (longer than max_len, a
    piece across the edge of an assistant span) and other tokenizers are tokenized the ordinary way.
    """

    def __init__(self, model_path: str, template_file: str, vocab_size: int, count: str, max_len: int,
                 holdout_fraction: float, use_pieces: bool = True, trust_remote_code: bool = False,
                 thinking: bool | None = None):
        from eagle_recipes.data.chat import load_tokenizer
        from eagle_recipes.data.pretokens import PieceVocabulary, PreTokenizer

        self.tokenizer = load_tokenizer(model_path, template_file, trust_remote_code, thinking)
        self.vocab_size, self.count, self.max_len = vocab_size, count, max_len
        self.holdout_fraction = holdout_fraction
        self.splitter = PreTokenizer.for_tokenizer(self.tokenizer) if use_pieces else None
        self.vocabulary = PieceVocabulary(self.tokenizer)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        import json

        from eagle_recipes.data.formats import split_of

        rows = [json.loads(text) for text in batch["text"] if text.strip()]
        result = {}
        for split in (TRAIN_SPLIT, HELD_OUT_SPLIT):
            chosen = [r["conversations"] for r in rows if split_of(r, self.holdout_fraction) == split]
            result[split] = self.count_conversations(chosen)[None, :]
        return result

    def count_conversations(self, conversations: list[list[dict]]) -> np.ndarray:
        from collections import Counter

        from eagle_recipes.data.chat import render_texts

        if self.splitter is None:
            return self._tokenize_and_count(conversations)
        masked = self.count == "assistant"
        piece_counts: Counter = Counter()
        truncated_ids: list[np.ndarray] = []  # counted tokens of conversations cut at max_len
        unsettled = []  # conversations that need the ordinary tokenizer
        for messages, (text, spans) in zip(conversations, render_texts(self.tokenizer, conversations, masked)):
            short = len(text.encode("utf-8")) <= self.max_len  # a token is at least one byte: never truncated
            if short and not masked:
                piece_counts.update(self.splitter.pieces(text))
                continue
            pieces = self.splitter.pieces_with_spans(text)
            counted = _inside_spans(pieces, spans) if masked else [True] * len(pieces)
            if counted is None:
                unsettled.append(messages)
                continue
            if not short:
                self.vocabulary.learn(piece for piece, _, _ in pieces)
                kept = self._first_tokens(pieces, counted)
                if kept is not None:
                    truncated_ids.append(kept)
                    continue
            piece_counts.update(piece for (piece, _, _), keep in zip(pieces, counted) if keep)
        self.vocabulary.learn(piece_counts)
        counts = self.vocabulary.count_tokens(piece_counts, self.vocab_size) + self._tokenize_and_count(unsettled)
        if truncated_ids:
            counts += bincount(np.concatenate(truncated_ids), self.vocab_size)
        return counts

    def _first_tokens(self, pieces: list[tuple[str, int, int]], counted: list[bool]) -> np.ndarray | None:
        """The counted token ids among the first max_len tokens, or None when the text has no more than that."""
        kept, total = [], 0
        for (piece, _, _), keep in zip(pieces, counted):
            ids = self.vocabulary.ids[piece]
            if total + len(ids) > self.max_len:
                if keep:
                    kept.append(ids[: self.max_len - total])
                return np.concatenate(kept) if kept else np.zeros(0, dtype=np.int64)
            if keep:
                kept.append(ids)
            total += len(ids)
        return None

    def _tokenize_and_count(self, conversations: list[list[dict]]) -> np.ndarray:
        from eagle_recipes.data.chat import render_batch

        counts = np.zeros(self.vocab_size, dtype=np.int64)
        for rendered in render_batch(self.tokenizer, conversations, self.max_len,
                                     with_mask=self.count == "assistant"):
            ids = np.asarray(rendered.input_ids, dtype=np.int64)
            counts += bincount(ids[np.asarray(rendered.loss_mask, dtype=bool)], self.vocab_size)
        return counts


def _inside_spans(pieces: list[tuple[str, int, int]], spans: list[tuple[int, int]]) -> list[bool] | None:
    """Which pieces lie inside an assistant span; None when one crosses a span's edge (its tokens would then be
    split between counted and not, which only the ordinary tokenizer's offsets settle)."""
    inside = []
    for _, start, end in pieces:
        within = False
        for span_start, span_end in spans:
            if span_start <= start and end <= span_end:
                within = True
                break
            if start < span_end and span_start < end:
                return None
        inside.append(within)
    return inside


def count_tokens(files: list[Path], model_path: str, template_file: str, vocab_size: int, count: str,
                 max_len: int, holdout_fraction: float, batch_size: int = 2048, workers: int = 2,
                 progress=None, use_ray_data: bool | None = None, use_pieces: bool = True,
                 trust_remote_code: bool = False, thinking: bool | None = None) -> dict[str, np.ndarray]:
    """Token counts per split (data/formats.py: TRAIN_SPLIT, HELD_OUT_SPLIT) over JSONL conversation files.

    Ray Data (`map_batches` over `workers` counting actors) when the files total RAY_DATA_MIN_BYTES or more, or
    when `use_ray_data` says so; below that, starting the actors costs more than the counting, so it runs here.
    """
    counter_args = dict(model_path=model_path, template_file=template_file, vocab_size=vocab_size, count=count,
                        max_len=max_len, holdout_fraction=holdout_fraction, use_pieces=use_pieces,
                        trust_remote_code=trust_remote_code, thinking=thinking)
    if use_ray_data is None:
        use_ray_data = sum(f.stat().st_size for f in files) >= RAY_DATA_MIN_BYTES
    if use_ray_data:
        import ray

        batches = ray.data.read_text([str(f) for f in files]).map_batches(
            TokenCounter, batch_size=batch_size, compute=ray.data.ActorPoolStrategy(size=workers), num_cpus=1,
            batch_format="numpy",
            fn_constructor_kwargs=counter_args).iter_batches(batch_size=None, batch_format="numpy")
    else:
        batches = _local_batches(files, TokenCounter(**counter_args), batch_size)
    totals = {split: np.zeros(vocab_size, dtype=np.int64) for split in (TRAIN_SPLIT, HELD_OUT_SPLIT)}
    for done, batch in enumerate(batches, start=1):
        for split in totals:
            totals[split] += batch[split].sum(axis=0)
        if progress:
            progress(done, None, "batches")
    return totals


def _local_batches(files: list[Path], counter: TokenCounter, batch_size: int):
    lines: list[str] = []
    for file in files:
        with open(file, encoding="utf-8") as handle:
            for line in handle:
                lines.append(line)
                if len(lines) == batch_size:
                    yield counter({"text": np.array(lines, dtype=object)})
                    lines = []
    if lines:
        yield counter({"text": np.array(lines, dtype=object)})


class CalibrateStage(Stage):
    name = CALIBRATE
    description = "count token frequencies, keep the top-K as the draft vocabulary (d2t/t2d)"
    headline_metric = "coverage"
    reads_from = (SYNTHESIZE,)

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
        return {"vocab": recipe.data["vocab"], **rendering_settings(recipe)}

    @staticmethod
    def input_files(recipe: Recipe) -> list[Path]:
        return conversation_input_files(recipe)

    @staticmethod
    def outputs(recipe: Recipe) -> list[str]:
        return [*map(str, RunFolder.mapping_files(RELATIVE.stage(CALIBRATE))), str(RELATIVE.token_counts)]

    @staticmethod
    def ray_options(recipe: Recipe) -> dict[str, Any]:
        return {"num_cpus": 1}

    @staticmethod
    def describe_resources(recipe: Recipe) -> list[str]:
        return [f"Ray Data: 2 counting actors x 1 CPU when the conversations total {RAY_DATA_MIN_BYTES >> 20} MiB "
                "or more (else counted in the stage's own task)"]

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
        files = conversation_files(recipe, ctx.upstream)
        counts = count_tokens(files, model_path, chat_template_file(recipe), vocab_size, recipe.vocab.count,
                              recipe.train.max_seq_len, recipe.dataset.holdout_fraction, progress=ctx.progress,
                              trust_remote_code=recipe.model.trust_remote_code,
                              thinking=thinking_when_rendered(recipe))
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
                           "holdout_tokens": int(counts[HELD_OUT_SPLIT].sum()), "files": len(files)},
                "metrics": {"draft_vocab_size": mapping.draft_vocab_size, "requested_draft_vocab_size": requested,
                            "coverage": coverage.get(TRAIN_SPLIT, 0.0), "holdout_coverage": coverage.get(HELD_OUT_SPLIT),
                            "identity": mapping.is_identity}}
