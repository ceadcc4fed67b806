"""Synthesis throughput: the in-process path (vLLM engines held by Ray Data actors, the synthesize stage's own
runner) against the seed's path (a many-threaded OpenAI client against a vLLM OpenAI server), same model, same
prompts, same max_tokens, greedy, in one run.

Two figures per side: generation only (after a warm-up request) and end to end (engine or server start-up
included: what a run pays). Prints tokens/s and the ratios.

    .venv/bin/python benchmarks/synthesis.py [--prompts 128] [--max-tokens 128] [--threads 64] [--quick] [--model PATH]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from common import add_quick_arguments, hardware, model_name, model_path, prompts  # noqa: E402


def seed_path(model: str, texts: list[str], max_tokens: int, threads: int) -> tuple[int, float, float]:
    from tests.helpers import VLLMServer

    started = time.perf_counter()
    server = VLLMServer(model, api_key="bench").start()
    try:
        def ask(text: str) -> int:
            body = json.dumps({"model": "base", "messages": [{"role": "user", "content": text}],
                               "max_tokens": max_tokens, "temperature": 0.0}).encode()
            request = urllib.request.Request(f"{server.base_url}/chat/completions", data=body,
                                             headers={"Content-Type": "application/json",
                                                      "Authorization": "Bearer bench"})
            with urllib.request.urlopen(request, timeout=600) as response:
                return json.loads(response.read())["usage"]["completion_tokens"]

        ask(texts[0])  # warm-up
        generating = time.perf_counter()
        with ThreadPoolExecutor(max_workers=threads) as pool:
            tokens = sum(pool.map(ask, texts))
        finished = time.perf_counter()
        return tokens, finished - generating, finished - started
    finally:
        server.kill()


def in_process_path(model: str, texts: list[str], max_tokens: int) -> tuple[int, float, float]:
    import ray

    from eagle_recipes.engines.generation import Sampling
    from eagle_recipes.data.conversation_store import StoreWriter
    from eagle_recipes.stages.synthesize import RayDataRunner

    ray.init(num_cpus=8, include_dashboard=False, log_to_driver=False)
    folder = tempfile.mkdtemp()
    try:
        started = time.perf_counter()
        runner = RayDataRunner(dict(model=model, dtype="auto", tensor_parallel_size=1, engine_kwargs={}, seed=0),
                               model, "", False, replicas=1)
        sampling = asdict(Sampling(temperature=0.0, top_p=1.0, max_tokens=max_tokens, seed=0))

        def shard(index: int, chosen: list[str]) -> dict:
            """A task as the stage makes one: its prompt rows in a store on disk, named by offset."""
            writer = StoreWriter(Path(folder) / f"prompts-{index}")
            for i, text in enumerate(chosen):
                writer.append({"conversation_id": f"{index}-{i}", "conversations": [{"role": "user", "content": text}]})
            store = writer.close()
            return {"kind": "shard", "shard": index, "prompts": str(store.path),
                    "offsets": store.offsets_of(0, len(store)), "sampling": sampling, "system_prompt": "",
                    "id_suffix": ""}

        # shard 0 is a warm-up request; each result carries the seconds its task took inside the actor
        results = {r["shard"]: r for r in runner.run([shard(0, texts[:1]), shard(1, texts)])}
        finished = time.perf_counter()
        tokens = sum(r["generated_tokens"] for r in results[1]["rows"])
        return tokens, results[1]["seconds"], finished - started
    finally:
        ray.shutdown()
        shutil.rmtree(folder, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prompts", type=int, default=128)
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--threads", type=int, default=64)
    add_quick_arguments(parser)
    args = parser.parse_args()
    if args.quick:
        args.prompts, args.max_tokens, args.threads = 8, 8, 8
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    model = model_path(args.model)
    texts = prompts(args.prompts)
    seed_tokens, seed_s, seed_total_s = seed_path(model, texts, args.max_tokens, args.threads)
    print(f"seed path measured: {seed_tokens} tokens, generation {seed_s:.1f} s, end to end {seed_total_s:.1f} s",
          flush=True)
    ours_tokens, ours_s, ours_total_s = in_process_path(model, texts, args.max_tokens)
    print(f"measured on {hardware()}")
    print(f"{model_name(args.model)}, {len(texts)} prompts x max {args.max_tokens} tokens, greedy")
    for name, tokens, generation_s, total_s in [
            (f"seed path (OpenAI server + {args.threads} client threads)", seed_tokens, seed_s, seed_total_s),
            ("in-process vLLM on Ray Data", ours_tokens, ours_s, ours_total_s)]:
        print(f"{name:50s} {tokens} tokens: generation {tokens / generation_s:7.1f} tokens/s, "
              f"end to end {tokens / total_s:7.1f} tokens/s ({total_s:.0f} s)")
    print(f"ratio (in-process / seed): generation {(ours_tokens / ours_s) / (seed_tokens / seed_s):.2f}x, "
          f"end to end {(ours_tokens / ours_total_s) / (seed_tokens / seed_total_s):.2f}x")


if __name__ == "__main__":
    main()
