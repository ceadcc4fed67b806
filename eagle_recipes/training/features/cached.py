"""Cached features: the capture stage runs the base model once over every training conversation and writes the
features; workers read them back by sequence index (training/target_source.py: CachedTarget). No base model in a
worker, only its embeddings and the LM head's draft rows; the features take disk."""

from __future__ import annotations

from typing import Any

from eagle_recipes.training.features.base import FeatureMode, WorkerMemory, WorkerParts
from eagle_recipes.units import gib


def _worker_memory(parts: WorkerParts, train: dict[str, Any]) -> WorkerMemory:
    return WorkerMemory(base=parts.head_weights, draft=parts.draft,
                        activations=parts.read_features + parts.draft_activations)


def _describe(recipe, sizes, free: int) -> str:
    bound = "" if sizes.tokens_exact else "at most "
    disk = ("unknown (set data.max_samples to the conversations you plan)" if sizes.cache_bytes is None
            else f"{bound}{gib(sizes.cache_bytes)}")
    return (f"cached: {disk} of feature disk ({sizes.bytes_per_token:,} B a token; {gib(free)} free under "
            f"output_dir), {gib(sizes.workers[CACHED.name].total)} per worker, the base model run once (capture)")


def _recommend(recipe, sizes, free: int) -> str | None:
    return "it fits the disk; no base model in the workers, one forward pass in all" if sizes.cache_fits(free) else None


def _target_source(config, draft_config, draft_ids, device, dtype, servers=None, rank=0):
    from eagle_recipes.training.target_source import CachedTarget

    return CachedTarget(config, draft_config, draft_ids, device, dtype)


CACHED = FeatureMode(
    name="cached", capture_skip=None, base_in_workers=False, writes_features=True, tune_refusal=None,
    forward_advice=None, worker_memory=_worker_memory, describe=_describe, recommend=_recommend, preference=0,
    target_source=_target_source,
)
