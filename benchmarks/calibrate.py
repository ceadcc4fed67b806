"""Calibration speed: this project's stage (Ray Data map_batches, batched fast-tokenizer calls, bincount) against
a faithful re-implementation of the seed's approach (one apply_chat_template per conversation, then a Counter),
same tokenizer, same K, count = "all". Prints both rates, the ratio, and whether the top-K sets are identical.

    .venv/bin/python benchmarks/calibrate.py [--conversations 4000] [--k 8192]
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
from common import conversations, model_path  # noqa: E402


def seed_topk(tokenizer, rows: list[dict], k: int) -> tuple[set[int], int, float]:
    started = time.perf_counter()
    counter: Counter = Counter()
    for row in rows:
        ids = tokenizer.apply_chat_template(row["conversations"], tokenize=True, return_dict=True)["input_ids"]
        counter.update(ids)
    chosen = {token for token, _ in counter.most_common(k)}
    return chosen, sum(counter.values()), time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--conversations", type=int, default=4000)
    parser.add_argument("--k", type=int, default=8192)
    args = parser.parse_args()

    import numpy as np
    import ray

    from eagle_recipes.data.chat import load_tokenizer
    from eagle_recipes.draft.vocab import top_k_ids
    from eagle_recipes.stages.calibrate import count_tokens

    path = model_path()
    tokenizer = load_tokenizer(path)
    rows = conversations(args.conversations)
    folder = Path(tempfile.mkdtemp())
    files = []
    for shard in range(8):
        file = folder / f"{shard:02d}.jsonl"
        file.write_text("".join(json.dumps(r) + "\n" for r in rows[shard::8]))
        files.append(file)

    seed_set, seed_tokens, seed_s = seed_topk(tokenizer, rows, args.k)

    ray.init(num_cpus=8, include_dashboard=False, log_to_driver=False)
    count_tokens(files[:1], path, "", len(tokenizer), "all", 1 << 20, 0.0)  # warm Ray Data up, as a real run has
    started = time.perf_counter()
    counts = count_tokens(files, path, "", len(tokenizer), "all", 1 << 20, 0.0)["train"]
    ours_s = time.perf_counter() - started
    ours_set = set(top_k_ids(counts, args.k).tolist())
    ray.shutdown()

    assert int(counts.sum()) == seed_tokens, (int(counts.sum()), seed_tokens)
    # ties at the K-th count may be broken differently by Counter.most_common; compare above the tie
    kth = np.sort(counts)[::-1][args.k - 1]
    strict = {int(t) for t in np.flatnonzero(counts > kth)}
    print(f"conversations {len(rows)}, tokens {seed_tokens}, K {args.k}")
    print(f"seed approach:  {seed_tokens / seed_s:12,.0f} tokens/s  ({seed_s:.2f} s)")
    print(f"eagle-recipes:  {seed_tokens / ours_s:12,.0f} tokens/s  ({ours_s:.2f} s)")
    print(f"identical top-K set: {ours_set == seed_set} (tokens above the K-th count identical: "
          f"{strict <= seed_set and strict <= ours_set})")
    print(f"speed ratio (eagle-recipes / seed): {seed_s / ours_s:.2f}x")


if __name__ == "__main__":
    main()
