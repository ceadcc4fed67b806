"""Synthesis throughput: the in-process path (vLLM engine as a Ray actor, batched) against the seed's path (a
many-threaded OpenAI client against `vllm serve`), same model, same prompts, same max_tokens, greedy, in one
run. Generation time only (engine and server start-up excluded for both). Prints tokens/s and the ratio.

    .venv/bin/python benchmarks/synthesis.py [--prompts 128] [--max-tokens 128] [--threads 64]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from common import model_path, prompts  # noqa: E402


def seed_path(model: str, texts: list[str], max_tokens: int, threads: int) -> tuple[int, float]:
    from tests.helpers import VLLMServer

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
        started = time.perf_counter()
        with ThreadPoolExecutor(max_workers=threads) as pool:
            tokens = sum(pool.map(ask, texts))
        return tokens, time.perf_counter() - started
    finally:
        server.kill()


def in_process_path(model: str, texts: list[str], max_tokens: int) -> tuple[int, float]:
    import ray

    from eagle_recipes.data.chat import load_tokenizer
    from eagle_recipes.engines import Sampling, VLLMEngines

    ray.init(num_cpus=8, include_dashboard=False, log_to_driver=False)
    try:
        tokenizer = load_tokenizer(model)
        ids = [tokenizer(tokenizer.apply_chat_template([{"role": "user", "content": t}], tokenize=False,
                                                       add_generation_prompt=True), add_special_tokens=False)["input_ids"]
               for t in texts]
        engines = VLLMEngines(model, "auto", replicas=1, tensor_parallel_size=1, engine_kwargs={}, seed=0)
        sampling = Sampling(temperature=0.0, top_p=1.0, max_tokens=max_tokens, seed=0)
        engines.generate(ids[:1], sampling)  # warm-up (and waits for the engine to start)
        started = time.perf_counter()
        replies = engines.generate(ids, sampling)
        return sum(r.tokens for r in replies), time.perf_counter() - started
    finally:
        ray.shutdown()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prompts", type=int, default=128)
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--threads", type=int, default=64)
    args = parser.parse_args()
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    model = model_path()
    texts = prompts(args.prompts)
    seed_tokens, seed_s = seed_path(model, texts, args.max_tokens, args.threads)
    ours_tokens, ours_s = in_process_path(model, texts, args.max_tokens)
    print(f"SmolLM2-135M, {len(texts)} prompts x max {args.max_tokens} tokens, greedy")
    print(f"seed path (vllm serve + {args.threads} client threads): {seed_tokens} tokens, "
          f"{seed_tokens / seed_s:7.1f} tokens/s")
    print(f"in-process vLLM on Ray:                         {ours_tokens} tokens, {ours_tokens / ours_s:7.1f} tokens/s")
    print(f"ratio (in-process / seed): {(ours_tokens / ours_s) / (seed_tokens / seed_s):.2f}x")


if __name__ == "__main__":
    main()
