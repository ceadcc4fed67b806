"""Calibration's cost: this project's way against a faithful re-implementation of the seed's approach (read the
JSONL, one apply_chat_template per conversation, then a Counter), same tokenizer, same K, count = "all".

This project's way is the tokenize stage's work (render and tokenize each shard of conversations in batches, with
the loss mask, into sequence shards on disk: what capture and training read too) and then calibrate's count over
those shards. So it does more than the seed's counter (the sequences training needs) and still counts the same.

Prints tokens/s of both, the ratio, and whether the top-K sets are identical. Two ratios: steady state (the
tokenizer already loaded on both sides) and end to end from the files (each side loads its tokenizer). The stage's
parallel path (Ray Data actors, one shard each) is timed too, on the same files.

    .venv/bin/python benchmarks/calibrate.py [--conversations 5000] [--k 8192] [--quick] [--model PATH]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import add_quick_arguments, conversations, hardware, model_name, model_path  # noqa: E402


def seed_topk(tokenizer, files: list[Path], k: int) -> tuple[set[int], int]:
    counter: Counter = Counter()
    for file in files:
        for line in file.read_text().splitlines():
            messages = json.loads(line)["conversations"]
            counter.update(tokenizer.apply_chat_template(messages, tokenize=True, return_dict=True)["input_ids"])
    return {token for token, _ in counter.most_common(k)}, sum(counter.values())


def timed(function, *args, **kwargs):
    started = time.perf_counter()
    result = function(*args, **kwargs)
    return result, time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--conversations", type=int, default=5000)
    parser.add_argument("--k", type=int, default=8192)
    add_quick_arguments(parser)
    args = parser.parse_args()
    if args.quick:
        args.conversations, args.k = 200, 512

    import numpy as np
    import ray

    from eagle_recipes.data.chat import load_tokenizer
    from eagle_recipes.draft.vocab import top_k_ids
    from eagle_recipes.engines.actor_pool import run_in_actor_pool
    from eagle_recipes.stages.calibrate import count_tokens
    from eagle_recipes.stages.tokenize import TokenizeActor

    path = model_path(args.model)
    load_tokenizer(path)  # warm the file cache: both sides then load at the same cost
    rows = conversations(args.conversations)
    folder = Path(tempfile.mkdtemp())
    files = []
    for shard in range(8):
        file = folder / f"{shard:02d}.jsonl"
        file.write_text("".join(json.dumps(r) + "\n" for r in rows[shard::8]))
        files.append(file)
    vocab = len(load_tokenizer(path))
    actor = {"model_path": path, "template_file": "", "trust_remote_code": False, "thinking": None,
             "max_seq_len": 1 << 20, "holdout_fraction": 0.0}
    tasks = [{"shard": index, "file": str(file)} for index, file in enumerate(files)]

    def ours(out: Path, tokenizing: TokenizeActor | None = None):
        """The tokenize stage's shards, in this process, then calibrate's count over them."""
        tokenizing = tokenizing or TokenizeActor(**actor, out=str(out))
        tokenizing.out = out
        for task in tasks:
            tokenizing.run_task(task)
        return count_tokens(out, vocab, "all")

    # end to end from the files: each side loads its tokenizer
    tokenizer, seed_load_s = timed(load_tokenizer, path)
    (seed_set, seed_tokens), seed_count_s = timed(seed_topk, tokenizer, files, args.k)
    counts, ours_s = timed(ours, folder / "end-to-end")
    ours_set = set(top_k_ids(counts, args.k).tolist())
    # steady state: the tokenizer already loaded
    loaded = TokenizeActor(**actor, out=str(folder / "unused"))
    _, ours_count_s = timed(ours, folder / "steady", loaded)

    ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False)
    parallel = folder / "ray-data"
    _, ray_s = timed(lambda: list(run_in_actor_pool(TokenizeActor, tasks, 2, {**actor, "out": str(parallel)},
                                                    {"num_cpus": 1})))
    ray.shutdown()
    ray_counts = count_tokens(parallel, vocab, "all")

    assert int(counts.sum()) == seed_tokens == int(ray_counts.sum()), (int(counts.sum()), seed_tokens)
    assert np.array_equal(counts, ray_counts)
    # ties at the K-th count may be broken differently by Counter.most_common; compare above the tie
    kth = np.sort(counts)[::-1][args.k - 1]
    strict = {int(t) for t in np.flatnonzero(counts > kth)}
    seed_total_s = seed_load_s + seed_count_s

    def rate(seconds: float) -> str:
        return f"{seed_tokens / seconds:12,.0f} tokens/s  ({seconds:.2f} s)"

    print(f"measured on {hardware()}")
    print(f"{model_name(args.model)}: conversations {len(rows)}, tokens {seed_tokens}, K {args.k}, identical top-K set: {ours_set == seed_set}"
          f" (tokens above the K-th count identical: {strict <= seed_set and strict <= ours_set})")
    print(f"steady state   seed {rate(seed_count_s)}   eagle-recipes {rate(ours_count_s)}")
    print(f"end to end     seed {rate(seed_total_s)}   eagle-recipes {rate(ours_s)}")
    print(f"Ray Data path (2 tokenizing actors, started within the timing): {rate(ray_s)}")
    print(f"speed ratio (eagle-recipes / seed): steady state {seed_count_s / ours_count_s:.2f}x, "
          f"end to end {seed_total_s / ours_s:.2f}x")


if __name__ == "__main__":
    main()
