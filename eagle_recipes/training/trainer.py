"""The driver's side: start the Ray Train workers (TorchTrainer) that run `loop.train_loop`."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from eagle_recipes.trackers import TrackingSpec
from eagle_recipes.training.config import TrainConfig
from eagle_recipes.training.loop import train_loop


def fit(config: TrainConfig, num_workers: int, cpus_per_worker: float, storage: Path,
        progress: Callable | None = None, tracking: TrackingSpec | None = None) -> None:
    """Train with `num_workers` workers (DDP over gloo on CPUs, NCCL on GPUs); Ray Train restarts failed workers
    twice from the last checkpoint."""
    from ray.train import FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    resources = {"GPU": 1, "CPU": 1} if config.use_gpu else {"CPU": cpus_per_worker}
    trainer = TorchTrainer(
        train_loop, train_loop_config={"config": config.to_dict(), "progress": progress, "tracking": tracking},
        scaling_config=ScalingConfig(num_workers=num_workers, use_gpu=config.use_gpu,
                                     resources_per_worker=resources),
        run_config=RunConfig(storage_path=str(storage), name="train",
                             failure_config=FailureConfig(max_failures=2)))
    trainer.fit()
