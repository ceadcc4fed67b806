"""Online features: every training worker holds the frozen base model and runs it forward for every batch
(training/target_source.py: OnlineTarget). No capture, no feature disk; the base model's weights in every worker."""

from __future__ import annotations

from typing import Any

from eagle_recipes.training.features.base import FeatureMode, WorkerMemory, WorkerParts
from eagle_recipes.units import gib


def _worker_memory(parts: WorkerParts, train: dict[str, Any]) -> WorkerMemory:
    return WorkerMemory(base=parts.base_weights, draft=parts.draft,
                        activations=parts.base_activations + parts.draft_activations)


def fits_accelerator(recipe, sizes) -> bool:
    """Whether a worker holding the whole base model fits its accelerator (a CPU worker: not checked)."""
    train = recipe.train
    return not train.use_gpu or sizes.workers[ONLINE.name].total <= train.accelerator_memory_gb * 1e9


def _describe(recipe, sizes, free: int) -> str:
    epochs = recipe.train.epochs
    return (f"online: no feature disk, {gib(sizes.workers[ONLINE.name].total)} per worker, the base model in every "
            f"worker and run forward over the data every epoch ({epochs} epoch{'s' if epochs > 1 else ''})")


def _recommend(recipe, sizes, free: int) -> str | None:
    if not fits_accelerator(recipe, sizes):
        return None
    return ("the feature cache would not fit the disk under output_dir" if sizes.cache_bytes is not None
            else "the feature cache's size is not known")


def _target_source(config, draft_config, draft_ids, device, dtype, servers=None, rank=0):
    from eagle_recipes.training.target_source import OnlineTarget

    return OnlineTarget(config, draft_config, draft_ids, device, dtype)


ONLINE = FeatureMode(
    name="online", capture_skip='train.features = "online" (the base model runs in each training worker)',
    base_in_workers=True, writes_features=False, tune_refusal=None,
    forward_advice=('The base model runs forward at every step (train.features = "online"): "cached" runs it '
                    'once, in the capture stage.'),
    worker_memory=_worker_memory, describe=_describe, recommend=_recommend, preference=1,
    target_source=_target_source,
)
