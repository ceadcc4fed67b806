"""Feature servers (`train.features = "streamed"`): capture engines that compute a micro-batch's base-model features
when a training worker asks for them, and hand them over through Ray's object store. Nothing is written to disk:
every epoch runs the base model again (a worker's optional stream cache keeps what fits; training/streamed.py).

A server holds one capture engine (engines/capture.py: a transformers forward on a GPU or the CPU, or vLLM's
extractor on GPUs) for the whole training run, the sequences memory-mapped, and answers
`features(folder, indices)` with the same per-token rows the capture stage stores in a shard, in the same stored
dtype, so a streamed worker and a cached one read the same numbers.

`start_feature_servers` starts them as Ray actors; `LocalFeatureServers` runs one in this process (no Ray: the GPU
check machine, and tests of the worker's side alone).

A server that dies (its process killed, its node preempted) is restarted by Ray, which asks the restarted one
again for every request it held (`max_restarts`, `max_task_retries`): a forward of the same sequences gives the
same features, so training goes on with the same batches in the same order. One that keeps dying ends the run
with `FeatureServerLost`, naming the server and the cause; the checkpoints written so far are kept.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import numpy as np

from eagle_recipes.data.sequences import Sequences
from eagle_recipes.engines.capture import CaptureSpec, captured_rows, engine_in_this_process

SERVER_RESTARTS = 3  # times Ray restarts a dead feature server before the run stops


class FeatureServerLost(RuntimeError):
    """A feature server that died more often than Ray restarts one."""


class FeatureServer:
    """One capture engine answering feature requests; counts what it served (sequences, tokens)."""

    def __init__(self, spec: dict, device=None):
        self.spec = CaptureSpec.from_dict(spec)
        self.engine = engine_in_this_process(self.spec, device)
        self.sequences: dict[str, Sequences] = {}
        # counts since this process started; `restarted`: 1 when Ray restarted this server after it died
        self.served = {"requests": 0, "sequences": 0, "tokens": 0, "restarted": int(_restarted_by_ray())}

    def features(self, folder: str, indices: list[int]) -> dict[str, Any]:
        """The features of sequences `indices` of the sequences in `folder`, back to back as a shard holds them:
        `hidden` [N, F], `final` [N, H] (drafters that read aux states), `top` [N] int32, and `lengths` [B]."""
        if folder not in self.sequences:
            self.sequences[folder] = Sequences.load(Path(folder))
        sequences = [np.asarray(self.sequences[folder].ids_of(i)) for i in indices]
        out = {**captured_rows(self.engine, self.spec, sequences), "lengths": [len(s) for s in sequences]}
        self.served["requests"] += 1
        self.served["sequences"] += len(indices)
        self.served["tokens"] += sum(out["lengths"])
        return out

    def served_counts(self) -> dict[str, int]:
        return dict(self.served)


def _restarted_by_ray() -> bool:
    """Whether Ray restarted this server's actor after it died: False in a process that is no Ray actor (a
    LocalFeatureServers), and where Ray is not even installed (the GPU check's bare machine)."""
    ray = sys.modules.get("ray")  # a Ray actor has imported it already
    if ray is None or not ray.is_initialized():
        return False
    context = ray.get_runtime_context()
    return context.get_actor_id() is not None and bool(context.was_current_actor_reconstructed)


def start_feature_servers(spec: CaptureSpec, replicas: int, placement: dict[str, Any]) -> list:
    """`replicas` FeatureServer actors with the Ray resources `placement` (engines/placement.py), started and
    ready (a server that cannot load its engine fails here, before any training worker waits on it). Each is
    restarted up to SERVER_RESTARTS times, its unanswered requests asked again of the restarted one."""
    import ray

    remote = ray.remote(FeatureServer)
    options = {key: value for key, value in placement.items() if key != "ray_remote_args_fn"}
    options.update(max_restarts=SERVER_RESTARTS, max_task_retries=SERVER_RESTARTS)
    if "ray_remote_args_fn" in placement:  # vLLM tensor parallel: a placement group per server
        options.update(placement["ray_remote_args_fn"]())
    servers = [remote.options(**options).remote(spec.to_dict()) for _ in range(replicas)]
    ray.get([server.served_counts.remote() for server in servers])
    return servers


def stop_feature_servers(servers: list) -> dict[str, int]:
    """What the servers served in all (a restarted server's counts start again at its restart; `restarted`: the
    servers Ray restarted, `lost`: those dead for good), then the servers stopped."""
    import ray
    from ray.exceptions import RayActorError

    totals = {"requests": 0, "sequences": 0, "tokens": 0, "restarted": 0, "lost": 0}
    for server in servers:
        try:
            counts = ray.get(server.served_counts.remote())
        except RayActorError:  # it kept dying: the run's error names it; its counts died with it
            totals["lost"] += 1
            continue
        for key in counts:
            totals[key] += counts[key]
    for server in servers:
        ray.kill(server)
    return totals


class LocalFeatureServers:
    """One FeatureServer in this process, answering at once: a streamed worker's side without Ray (the GPU check's
    machine has none). `submit` and `result` are the two calls a worker makes (training/streamed.py)."""

    def __init__(self, server: FeatureServer):
        self.server = server

    def submit(self, folder: str, indices: list[int], turn: int):
        return self.server.features(folder, indices)

    def result(self, handle) -> dict[str, Any]:
        return handle


class RayFeatureServers:
    """Ray actor handles of the feature servers; a worker's requests go round them in turn, from its own first
    server. Data-parallel workers step in lockstep, so each starts `in_flight` servers after the previous rank's
    (`first = rank x train.streamed.in_flight`): the W x in_flight requests out at once land on as many servers, not on the
    same few."""

    def __init__(self, handles: list, first: int = 0):
        self.handles, self.first = handles, first

    def submit(self, folder: str, indices: list[int], turn: int) -> tuple[int, Any]:
        """(the server's index, the reference to its answer)."""
        index = (self.first + turn) % len(self.handles)
        return index, self.handles[index].features.remote(folder, indices)

    def result(self, handle: tuple[int, Any]) -> dict[str, Any]:
        import ray
        from ray.exceptions import RayActorError

        index, reference = handle
        try:
            return ray.get(reference)
        except RayActorError as error:  # dead for good: Ray restarted it SERVER_RESTARTS times already
            cause = " ".join(str(error).split())  # Ray's message, on one line (its pid, node and why it died)
            raise FeatureServerLost(
                f"feature server {index + 1} of {len(self.handles)} is dead for good (Ray restarts a dead one "
                f"{SERVER_RESTARTS} times); last cause: {cause} The checkpoints written so far are kept: run again "
                f"to resume from the last one") from error
