"""Streamed features: feature servers (the [capture] table's engine, capture.replicas of them) compute each batch's
features when a worker asks, through Ray's object store (engines/feature_server.py, training/streamed.py). No
base model in a worker and no feature disk; the base model runs over the data every epoch. Its own settings are
the recipe's [train.streamed] table: `in_flight` requests a worker has out at once, `cache_gib` of served features
it keeps."""

from __future__ import annotations

from typing import Any

from eagle_recipes.training.features.base import CoreSplit, FeatureMode, WorkerMemory, WorkerParts
from eagle_recipes.units import GiB, gib


def _worker_memory(parts: WorkerParts, train: dict[str, Any]) -> WorkerMemory:
    """What a cached worker holds, plus the features of the batches it asked for ahead and its stream cache."""
    settings = train["streamed"]
    held = settings["in_flight"] * parts.batch_features + int(settings["cache_gib"] * GiB)
    return WorkerMemory(base=parts.head_weights, draft=parts.draft,
                        activations=parts.read_features + parts.draft_activations + held)


def _describe(recipe, sizes, free: int) -> str:
    replicas = recipe.capture.replicas
    return (f"streamed: no feature disk, {gib(sizes.workers[STREAMED.name].total)} per worker (the cached worker's, "
            f"{recipe.train.streamed.in_flight} batches in flight and the stream cache), {replicas} feature "
            f"server{'s' if replicas > 1 else ''} running the base model over the data every epoch")


def _recommend(recipe, sizes, free: int) -> str | None:
    return "online needs more than train.accelerator_memory_gb per GPU and the cache more than the free disk"


def core_split(train: dict[str, Any], capture: dict[str, Any]) -> CoreSplit | None:
    """On CPUs: the servers take `server_cpus` each (0: half the cores given to training, shared by the servers,
    at least one each), the workers share the rest (at least one each). On GPUs the servers hold GPUs of their
    own: None."""
    if train["use_gpu"]:
        return None
    given = int(train["num_workers"] * train["cpus_per_worker"])
    replicas = capture["replicas"]
    server_cpus = train["streamed"]["server_cpus"] or max(1, given // 2 // replicas)
    worker_cpus = max(1, (given - server_cpus * replicas) // train["num_workers"])
    return CoreSplit(given=given, worker_cpus=worker_cpus, server_cpus=server_cpus)


def _resources(recipe) -> list[str]:
    capture, settings = recipe.capture, recipe.train.streamed
    lines = [f"feature servers: {capture.replicas} x {capture.engine} ({capture.dtype}), {settings.in_flight} "
             f"batches in flight per worker, stream cache {settings.cache_gib:g} GiB per worker"]
    split = core_split(recipe.data["train"], recipe.data["capture"])
    if split:
        lines.append(f"cores: the {split.given} given to training (train.num_workers x train.cpus_per_worker) "
                     f"split: {split.worker_cpus} per training worker, {split.server_cpus} per feature server "
                     f"(train.streamed.server_cpus)")
    return lines


def _target_source(config, draft_config, draft_ids, device, dtype, servers=None, rank=0):
    """Rank r's requests start at server r x in_flight: DDP workers step in lockstep, so the W x in_flight requests
    out at once land on as many servers, not all on the first ones."""
    from eagle_recipes.engines.feature_server import RayFeatureServers
    from eagle_recipes.training.streamed import StreamedTarget

    if isinstance(servers, list):  # the servers' Ray handles (a Ray Train worker); else already routed (no Ray)
        servers = RayFeatureServers(servers, first=rank * config.feature_settings["in_flight"])
    return StreamedTarget(config, draft_ids, device, dtype, servers, config.data_folder)


def _start_servers(config) -> list:
    """`capture.replicas` capture engines as Ray actors, on the cluster's GPUs or a CPU each."""
    from eagle_recipes.engines.capture import CaptureSpec
    from eagle_recipes.engines.feature_server import start_feature_servers
    from eagle_recipes.engines.placement import capture_placement, cluster_has_gpus

    spec = CaptureSpec.from_dict(config.feature_servers["spec"])
    on_gpus = cluster_has_gpus()
    placement = capture_placement(spec.engine, spec.tensor_parallel_size, on_gpus)
    if not on_gpus and spec.threads:  # its share of the cores (core_split), as Ray resources too
        placement["num_cpus"] = spec.threads
    return start_feature_servers(spec, config.feature_servers["replicas"], placement)


def _stop_servers(servers: list) -> dict[str, int]:
    from eagle_recipes.engines.feature_server import stop_feature_servers

    return stop_feature_servers(servers)


STREAMED = FeatureMode(
    name="streamed", capture_skip='train.features = "streamed" (feature servers compute features as training asks)',
    base_in_workers=False, writes_features=False,
    tune_refusal="a tune's trials share the run's features, and streamed training keeps none",
    forward_advice=None, worker_memory=_worker_memory, describe=_describe, recommend=_recommend, preference=2,
    target_source=_target_source, feature_servers=True, start_servers=_start_servers, stop_servers=_stop_servers,
    resources=_resources, core_split=core_split,
)
