"""Training cost, online against cached, on SmolLM2-135M-Instruct, with the training stage's own feature sources.

- base forward: the base model's plain forward on a sequence (the unit of comparison);
- online step: `OnlineTarget` (base forward with hidden states and full-vocabulary logits) + the draft's
  training-time-test unroll forward and backward + AdamW;
- cached step: `CachedTarget` (the same features read back from capture shards written here first) + the same
  draft work.

Prints tokens/s of each, the online step over one base forward, and cached over online (same run, same draft,
same sequences).

    .venv/bin/python benchmarks/train.py [--ttt-steps 3] [--draft-vocab 3434] [--steps 24] [--threads 2]
        [--quick] [--model PATH]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import add_quick_arguments, conversations, hardware, model_name, model_path  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ttt-steps", type=int, default=3)
    parser.add_argument("--draft-vocab", type=int, default=3434, help="the quickstart's (3,434 tokens occur)")
    parser.add_argument("--steps", type=int, default=24)
    parser.add_argument("--threads", type=int, default=2)
    add_quick_arguments(parser)
    args = parser.parse_args()
    if args.quick:
        args.steps, args.draft_vocab = 4, 256

    import numpy as np
    import torch
    from transformers import AutoModelForCausalLM

    from eagle_recipes.data.chat import load_tokenizer
    from eagle_recipes.data.feature_cache import shard_path, write_head, write_shard
    from eagle_recipes.data.sequences import tokenize
    from eagle_recipes.draft.config import BaseModelFacts
    from eagle_recipes.draft.drafters import build_draft, build_draft_config
    from eagle_recipes.draft.ttt import TTTObjective
    from eagle_recipes.draft.vocab import top_k_ids
    from eagle_recipes.engines.capture import CaptureSpec, HFCaptureEngine
    from eagle_recipes.models import load_base_config
    from eagle_recipes.training.batches import collate
    from eagle_recipes.recipe.schema import table_defaults
    from eagle_recipes.training.config import TrainConfig
    from eagle_recipes.training.target_source import CachedTarget, OnlineTarget

    torch.set_num_threads(args.threads)
    path = model_path(args.model)
    tokenizer = load_tokenizer(path)
    data = tokenize(tokenizer, [c["conversations"] for c in conversations(args.steps + 1)], 512)
    ids = data.ids_between(0, data.count)
    counts = np.bincount(ids, minlength=len(tokenizer))
    top = top_k_ids(counts, args.draft_vocab)  # then unseen ids, so the head has the size asked for
    fill = np.setdiff1d(np.arange(len(tokenizer)), top)[: max(0, args.draft_vocab - len(top))]
    draft_ids = torch.from_numpy(np.sort(np.concatenate([top, fill])))
    facts = BaseModelFacts.from_config(load_base_config(path))
    draft_config = build_draft_config("eagle3", {}, facts, len(draft_ids))

    with tempfile.TemporaryDirectory() as folder:
        capture = Path(folder)
        data.save(capture)
        spec = CaptureSpec(model_path=path, data_folder=folder, out=folder, algorithm="eagle3",
                           aux_layer_ids=draft_config.aux_layer_ids, dtype="bfloat16", engine="hf",
                           tensor_parallel_size=1, trust_remote_code=False)
        engine = HFCaptureEngine(spec)
        sequences = [data.ids_of(i) for i in range(data.count)]
        rows = [engine.capture([s])[0] for s in sequences]
        write_shard(shard_path(capture, 0), 0, {
            "hidden": torch.cat([r["hidden"] for r in rows]).bfloat16(), "final": torch.cat([r["final"] for r in rows]).bfloat16(),
            "top": torch.cat([r["top"] for r in rows]).int(), "input_ids": torch.from_numpy(ids)})
        write_head(capture, path, torch.bfloat16)
        config = TrainConfig.from_train_table(  # the schema's [train] defaults, then this benchmark's settings
            table_defaults("train"), model_path=path, draft_config=draft_config.to_dict(), vocab_file="",
            data_folder=folder, checkpoint_dir="", metrics_file="", features="online", capture_dir=folder,
            threads=args.threads, precision="float32", ttt_steps=args.ttt_steps, simulate_k=5)
        sources = {"online": OnlineTarget(config, draft_config, draft_ids, torch.device("cpu"), torch.float32),
                   "cached": CachedTarget(config, draft_config, draft_ids, torch.device("cpu"), torch.float32)}
        target = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
        seconds = {"base forward": 0.0, "online": 0.0, "cached": 0.0}
        tokens = 0
        for index in range(len(sequences)):
            input_ids, loss_mask, padding = collate(data, [index], "assistant")
            started = time.perf_counter()
            with torch.no_grad():
                target(input_ids=input_ids)
            timings = {"base forward": time.perf_counter() - started}
            for name, source in sources.items():
                torch.manual_seed(0)
                draft = build_draft(draft_config)
                objective = TTTObjective(draft, args.ttt_steps, 0.8)
                optimizer = torch.optim.AdamW(draft.parameters(), lr=1e-4)
                started = time.perf_counter()
                outputs = source.outputs(input_ids, loss_mask, padding, [index])
                loss, _ = objective(outputs, source.embed)
                loss.backward()
                optimizer.step()
                timings[name] = time.perf_counter() - started
            if index:  # the first sequence warms up allocators and kernels
                tokens += input_ids.numel()
                for name, value in timings.items():
                    seconds[name] += value
    rate = {name: tokens / value for name, value in seconds.items()}
    print(f"measured on {hardware()}")
    print(f"{model_name(args.model)}, EAGLE-3, {args.ttt_steps} TTT steps, draft vocab {len(draft_ids)}, "
          f"{len(sequences) - 1} sequences ({tokens} tokens), {args.threads} threads")
    for name in seconds:
        print(f"{name + ':':14s} {rate[name]:8.1f} tokens/s")
    print(f"online step / base forward:  {seconds['online'] / seconds['base forward']:.2f}x")
    print(f"cached / online (tokens/s):  {rate['cached'] / rate['online']:.2f}x")


if __name__ == "__main__":
    main()
