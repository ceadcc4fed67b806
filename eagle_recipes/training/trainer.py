"""The driver's side: start the Ray Train workers (TorchTrainer) that run `loop.train_loop`."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from eagle_recipes.trackers import TrackingSpec
from eagle_recipes.training.features import feature_mode
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

    mode = feature_mode(config.features)
    servers = mode.start_servers(config) if mode.start_servers else None
    try:
        trainer = TorchTrainer(
            train_loop, train_loop_config={"config": config.to_dict(), "progress": progress, "tracking": tracking,
                                           "log": log, "feature_servers": servers},
            scaling_config=scaling_config(config.use_gpu, num_workers, cpus_per_worker),
            run_config=RunConfig(storage_path=str(storage), name="train",
                                 failure_config=FailureConfig(max_failures=2)))
        trainer.fit()
    finally:
        served = mode.stop_servers(servers) if servers else {}
    return served
