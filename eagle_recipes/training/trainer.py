"""The driver's side: start the Ray Train workers (TorchTrainer) that run `loop.train_loop`."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from eagle_recipes.trackers import TrackingSpec
from eagle_recipes.training.config import TrainConfig
from eagle_recipes.training.loop import train_loop


def scaling_config(use_gpu: bool, num_workers: int, cpus_per_worker: float):
    """One GPU (and a CPU) per worker on GPUs; `cpus_per_worker` CPUs per worker otherwise."""
    from ray.train import ScalingConfig

    resources = {"GPU": 1, "CPU": 1} if use_gpu else {"CPU": cpus_per_worker}
    return ScalingConfig(num_workers=num_workers, use_gpu=use_gpu, resources_per_worker=resources)


def fit(config: TrainConfig, num_workers: int, cpus_per_worker: float, storage: Path,
        progress: Callable | None = None, tracking: TrackingSpec | None = None,
        log: Callable[[str], None] | None = None) -> dict[str, int]:
    """Train with `num_workers` workers (gloo on CPUs, NCCL on GPUs); Ray Train restarts failed workers twice,
    each resuming from the last checkpoint. Streamed features: the feature servers run beside the workers for
    the whole fit; returns what they served (requests, sequences, tokens; empty otherwise)."""
    from ray.train import FailureConfig, RunConfig
    from ray.train.torch import TorchTrainer

    servers = start_servers(config) if config.features == "streamed" else None
    try:
        trainer = TorchTrainer(
            train_loop, train_loop_config={"config": config.to_dict(), "progress": progress, "tracking": tracking,
                                           "log": log, "feature_servers": servers},
            scaling_config=scaling_config(config.use_gpu, num_workers, cpus_per_worker),
            run_config=RunConfig(storage_path=str(storage), name="train",
                                 failure_config=FailureConfig(max_failures=2)))
        trainer.fit()
    finally:
        served = stop_servers(servers)
    return served


def start_servers(config: TrainConfig) -> list:
    """The feature servers of streamed training: the capture engine of the recipe, `capture.replicas` of them, on
    the cluster's GPUs or a CPU each."""
    from eagle_recipes.engines.capture import CaptureSpec
    from eagle_recipes.engines.feature_server import start_feature_servers
    from eagle_recipes.engines.placement import capture_placement, cluster_has_gpus

    spec = CaptureSpec.from_dict(config.feature_servers["spec"])
    placement = capture_placement(spec.engine, spec.tensor_parallel_size, cluster_has_gpus())
    return start_feature_servers(spec, config.feature_servers["replicas"], placement)


def stop_servers(servers: list | None) -> dict[str, int]:
    from eagle_recipes.engines.feature_server import stop_feature_servers

    return stop_feature_servers(servers) if servers else {}
