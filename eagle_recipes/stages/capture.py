"""Capture: run the base model once over every training conversation and store the features the draft reads
(planned only when `train.features = "cached"`). Training then reads them back every epoch instead of running
the base model; its workers hold no base model weights, so bases larger than one accelerator can train.

The sequences are the tokenize stage's (data/sequences.py, what training reads too), split into fixed shards of
`capture.sequences_per_shard`, and each shard is one task for the Ray Data actors that hold the engines
(`capture.replicas` of them, like synthesis; engines/capture.py). A shard is written atomically as
it finishes; a re-run keeps every whole shard and redoes the rest. The format: data/feature_cache.py.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from eagle_recipes.data.feature_cache import (
    bytes_per_token,
    head_is_whole,
    shard_is_whole,
    shard_path,
    shard_ranges,
    write_head,
)
from eagle_recipes.recipe import Recipe
from eagle_recipes.run_folder import CAPTURE, FEATURE_SHARDS, HELD_OUT_FOLDER, RELATIVE, TOKENIZE
from eagle_recipes.stages.base import Stage, StageContext
from eagle_recipes.recipe.base_model import base_model_path, rendering_settings


class CaptureStage(Stage):
    name = CAPTURE
    description = "run the base model once over the training conversations and store its features"
    headline_metric = "tokens_per_s"
    reads_from = (TOKENIZE,)

    @staticmethod
    def enabled(recipe: Recipe) -> tuple[bool, str]:
        from eagle_recipes.training.features import feature_mode

        skipped = feature_mode(recipe.train.features).capture_skip
        return (False, skipped) if skipped else (True, "")


    @staticmethod
    def settings(recipe: Recipe) -> dict[str, Any]:
        from eagle_recipes.draft.drafters import drafter

        draft = recipe.data["draft"]
        # what is captured, not which drafter reads it: drafters reading the same states share a capture
        captured_for = drafter(draft["algorithm"]).captured_as
        from eagle_recipes.data.sequences import SEQUENCES_LAYOUT

        return {"capture": recipe.data["capture"], **rendering_settings(recipe), "sequences": SEQUENCES_LAYOUT,
                "draft": {"algorithm": captured_for,
                          "aux_layer_ids": draft.get("overrides", {}).get("aux_layer_ids")}}

    @staticmethod
    def outputs(recipe: Recipe) -> list[str]:
        from eagle_recipes.run_folder import HEAD_FILE

        features = RELATIVE.features
        return [str(features / HEAD_FILE),
                f"{features / FEATURE_SHARDS}/*.safetensors",
                f"{features / HELD_OUT_FOLDER}/ (the held-out split's)"]

    @staticmethod
    def describe_resources(recipe: Recipe) -> list[str]:
        from eagle_recipes.sizes import training_sizes
        from eagle_recipes.units import gib

        capture = recipe.capture
        per_engine = f"{capture.tensor_parallel_size} GPU" if capture.engine == "vllm" else "1 GPU (or the CPU)"
        lines = [f"engines: {capture.replicas} x {capture.engine}, {per_engine} each"]
        sizes = training_sizes(recipe)
        if sizes and sizes.tokens is not None:
            bound = "" if sizes.tokens_exact else "at most "
            lines.append(f"cache: {bound}{sizes.tokens:,} tokens x {sizes.bytes_per_token:,} B = "
                         f"{bound}{gib(sizes.cache_bytes)}")
        return lines

    @staticmethod
    def run(ctx: StageContext) -> dict[str, Any]:
        import torch

        from eagle_recipes.data.sequences import Sequences, sequence_count
        from eagle_recipes.engines.actor_pool import run_in_actor_pool
        from eagle_recipes.engines.capture import CaptureActor
        from eagle_recipes.recipe.draft_config import capture_spec
        from eagle_recipes.engines.placement import capture_placement, cluster_has_gpus
        from eagle_recipes.models import base_model_facts

        recipe, capture = ctx.recipe, ctx.recipe.capture
        model_path = base_model_path(recipe)
        data = ctx.upstream[TOKENIZE]
        sequences = Sequences.load(data)
        count = sequences.count
        # the held-out split too (a few percent more): training replays it to simulate acceptance
        held_out = sequence_count(data / HELD_OUT_FOLDER)
        spec = capture_spec(recipe, model_path, data, ctx.out)
        stored = getattr(torch, capture.dtype)
        if not head_is_whole(ctx.out):
            write_head(ctx.out, model_path, stored)
        per_token = bytes_per_token(base_model_facts(model_path).hidden_size, len(spec.aux_layer_ids),
                                    stored.itemsize, spec.algorithm)
        _check_disk_room(ctx.out, per_token * sequences.tokens)
        tasks, done_before = _pending_shards(data, ctx.out, "", capture.sequences_per_shard)
        if held_out:
            tasks += _pending_shards(data, ctx.out, HELD_OUT_FOLDER, capture.sequences_per_shard)[0]
        if done_before:
            ctx.log(f"resuming: {done_before} of {count} sequences already captured")
        ctx.progress(done_before, count, "conversations")
        started, captured, tokens = time.time(), 0, 0
        placement = capture_placement(capture.engine, capture.tensor_parallel_size, cluster_has_gpus())
        for result in run_in_actor_pool(CaptureActor, tasks, capture.replicas, {"spec": spec.to_dict()}, placement):
            tokens += result["tokens"]
            if result["folder"] == "":
                captured += result["sequences"]
                ctx.progress(done_before + captured, count, "conversations")
        wall = time.time() - started
        shards = len(shard_ranges(count, capture.sequences_per_shard))
        return {"counts": {"sequences": count, "tokens": sequences.tokens, "captured_this_run": captured,
                           "resumed_from_earlier_run": done_before, "shards": shards, "holdout_sequences": held_out},
                "metrics": {"tokens_per_s": tokens / wall if wall and tokens else 0.0, "bytes_per_token": per_token,
                            "cache_bytes": per_token * sequences.tokens, "engine": capture.engine,
                            "dtype": capture.dtype}}


def _pending_shards(data: Path, out: Path, folder: str, per_shard: int) -> tuple[list[dict], int]:
    """(the capture tasks of the shards still to write, sequences already captured whole) for the sequences in
    data/folder, captured into out/folder: a shard is kept only when it holds exactly its sequences' token ids."""
    from eagle_recipes.data.sequences import Sequences

    sequences = Sequences.load(data / folder)
    tasks, done = [], 0
    for index, (first, size) in enumerate(shard_ranges(sequences.count, per_shard)):
        expected = sequences.ids_between(first, first + size)
        if shard_is_whole(shard_path(out / folder, index), first, expected):
            done += size
        else:
            tasks.append({"shard": index, "first": first, "count": size, "folder": folder})
    return tasks, done


def _check_disk_room(out: Path, cache_bytes: int) -> None:
    """Refuse before the first shard when the cache cannot fit (shards already there count as written)."""
    import shutil

    from eagle_recipes.units import gib

    written = sum(p.stat().st_size for p in (out / FEATURE_SHARDS).glob("*.safetensors")) if (out / FEATURE_SHARDS).exists() else 0
    free = shutil.disk_usage(out).free
    if cache_bytes - written > free:
        raise RuntimeError(f"{out}: the feature cache needs {gib(cache_bytes - written)} more, the disk has "
                           f"{gib(free)} free; free room, set output_dir on a larger disk, or use "
                           'capture.dtype = "bfloat16" (half of float32)')
