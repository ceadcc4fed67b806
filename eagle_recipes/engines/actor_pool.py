"""Tasks through a pool of Ray Data actors, each holding one engine for the whole pass: how synthesis and capture
spread their shards over GPUs and nodes (data parallel) and stream each result back as it finishes.

A task is a JSON-able dict; an actor class subclasses `TaskActor` and implements `run_task(task) -> dict`.
"""

from __future__ import annotations

import json
from typing import Any, Iterator

import numpy as np


class TaskActor:
    """The Ray Data side of an actor: one task per batch row in, one JSON result per row out."""

    def run_task(self, task: dict) -> dict:
        raise NotImplementedError

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        results = [json.dumps(self.run_task(json.loads(task))) for task in batch["task"]]
        return {"result": np.array(results, dtype=object)}


def run_in_actor_pool(actor: type[TaskActor], tasks: list[dict], replicas: int, actor_kwargs: dict[str, Any],
                      placement: dict[str, Any]) -> Iterator[dict]:
    """Run `tasks` on `replicas` actors (at most one per task), each built once with `actor_kwargs` and the Ray
    resources `placement` (engines/placement.py); yields results in the order they finish."""
    import ray

    if not tasks:
        return
    ray.data.DataContext.get_current().enable_progress_bars = False  # the stages report their own progress
    dataset = ray.data.from_items([{"task": json.dumps(t)} for t in tasks], override_num_blocks=len(tasks))
    # one task in flight per actor: an engine that is ready first does not queue the shards a slower-starting
    # one would take (Ray Data's default hands a ready actor several at once)
    strategy = ray.data.ActorPoolStrategy(size=min(replicas, len(tasks)), max_tasks_in_flight_per_actor=1)
    results = dataset.map_batches(actor, batch_size=1, batch_format="numpy", compute=strategy,
                                  fn_constructor_kwargs=actor_kwargs, **placement)
    for row in results.iter_rows():
        yield json.loads(row["result"])
