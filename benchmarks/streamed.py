"""Streamed features: do training steps speed up with the feature servers? W training workers (Ray actors, in
lockstep as data-parallel workers are: every step waits for all) each ask the servers for their micro-batches
ahead through the training code's own `StreamedTarget` (`train.streamed.in_flight` out at once), and S feature
servers (Ray actors) answer each request after a fixed wait that stands for a GPU's forward, so two CPU cores can
measure the routing alone. Prints steps/s for S = 1, 2, 4, also (but in --quick) with every worker starting at the
first server (the routing before each rank had its own first server), and last `steps/s with 4 servers / 1 server = X.XXx`.

    .venv/bin/python benchmarks/streamed.py [--workers 2] [--in-flight 2] [--server-seconds 0.2]
        [--step-seconds 0.02] [--steps 40] [--quick]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from types import SimpleNamespace

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import hardware  # noqa: E402

TOKENS, HIDDEN, FEATURES, DRAFT_VOCAB = 16, 8, 24, 32


class WaitingServer:
    """A feature server whose forward is a fixed wait: it answers a request with rows of the right shapes."""

    def __init__(self, seconds: float):
        self.seconds, self.requests = seconds, 0

    def features(self, folder: str, indices: list[int]) -> dict:
        import torch

        time.sleep(self.seconds)
        self.requests += 1
        rows = TOKENS * len(indices)
        return {"hidden": torch.zeros(rows, FEATURES), "final": torch.zeros(rows, HIDDEN),
                "top": torch.zeros(rows, dtype=torch.int32), "lengths": [TOKENS] * len(indices)}

    def served(self) -> int:
        return self.requests


class Worker:
    """One training worker: the real StreamedTarget over the servers, and a fixed wait per step for the draft's
    own forward and backward."""

    def __init__(self, rank: int, handles: list, in_flight: int, step_seconds: float, steps: int, spread: bool):
        import torch

        from eagle_recipes.engines.feature_server import RayFeatureServers
        from eagle_recipes.training.streamed import StreamCache, StreamedTarget

        torch.set_num_threads(1)
        held = SimpleNamespace(embed=None, draft_head=torch.nn.Linear(HIDDEN, DRAFT_VOCAB, bias=False),
                               final_norm=None, in_draft=torch.ones(DRAFT_VOCAB, dtype=torch.bool),
                               cache=StreamCache(0))
        config = SimpleNamespace(feature_settings={"in_flight": in_flight, "cache_gib": 0.0})
        servers = RayFeatureServers(handles, first=rank * in_flight if spread else 0)
        self.target = StreamedTarget(config, None, torch.device("cpu"), torch.float32, servers, "bench", shared=held)
        self.batches = [[rank * 100_000 + step] for step in range(steps)]
        self.target.expect(self.batches)
        self.step_seconds, self.done = step_seconds, 0

    def step(self) -> None:
        import torch

        indices = self.batches[self.done]
        shape = (1, TOKENS)
        self.target.outputs(torch.zeros(shape, dtype=torch.long), torch.ones(shape), torch.zeros(shape, dtype=torch.bool),
                            indices)
        time.sleep(self.step_seconds)
        self.done += 1


def steps_per_second(servers: int, args, spread: bool) -> tuple[float, list[int]]:
    """Lockstep steps/s of `args.workers` workers over `servers` waiting servers, and each server's requests."""
    import ray

    handles = [ray.remote(num_cpus=0)(WaitingServer).remote(args.server_seconds) for _ in range(servers)]
    workers = [ray.remote(num_cpus=0)(Worker).remote(rank, handles, args.in_flight, args.step_seconds, args.steps,
                                                     spread) for rank in range(args.workers)]
    ray.get([w.step.remote() for w in workers])  # the first step starts every actor and fills the pipelines
    started = time.perf_counter()
    for _ in range(args.steps - 1):
        ray.get([w.step.remote() for w in workers])  # a barrier, as DDP's all-reduce is
    rate = (args.steps - 1) / (time.perf_counter() - started)
    shares = ray.get([h.served.remote() for h in handles])
    for actor in workers + handles:
        ray.kill(actor)
    return rate, shares


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--in-flight", type=int, default=2, help="train.streamed.in_flight")
    parser.add_argument("--server-seconds", type=float, default=0.2, help="a server's forward, as a fixed wait")
    parser.add_argument("--step-seconds", type=float, default=0.02, help="a worker's own step, as a fixed wait")
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--quick", action="store_true", help="seconds: checks that it runs, not a figure")
    args = parser.parse_args()
    if args.quick:
        args.steps, args.server_seconds, args.step_seconds = 8, 0.05, 0.005

    import ray

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # a local Ray of this process alone
    ray.init(num_cpus=8, include_dashboard=False, log_to_driver=False)
    print(f"streamed features: {args.workers} workers in lockstep, {args.in_flight} requests in flight each, a "
          f"server forward of {args.server_seconds:g} s, a worker step of {args.step_seconds:g} s")
    print(f"measured on {hardware()}")
    rates = {}
    for servers in (1, 2, 4):
        rates[servers], shares = steps_per_second(servers, args, spread=True)
        line = f"  {servers} server(s): {rates[servers]:.2f} steps/s, requests per server {shares}"
        if not args.quick:  # the routing before: every rank starting at the first server
            before, before_shares = steps_per_second(servers, args, spread=False)
            line += f"; every worker from the first server: {before:.2f} steps/s, {before_shares}"
        print(line)
    ray.shutdown()
    print(f"steps/s with 4 servers / 1 server = {rates[4] / rates[1]:.2f}x")


if __name__ == "__main__":
    main()
