"""Online training cost: one EAGLE-3 training step (frozen target forward for hidden states and targets, the
draft's training-time-test unroll forward and backward, AdamW) divided by the base model's plain forward on the
same batch, both measured here on SmolLM2-135M-Instruct. Prints the ratio and tokens/s.

    .venv/bin/python benchmarks/train.py [--ttt-steps 7] [--draft-vocab 8192] [--steps 8]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import conversations, model_path  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ttt-steps", type=int, default=7)
    parser.add_argument("--draft-vocab", type=int, default=8192)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()

    import json

    import numpy as np
    import torch
    from transformers import AutoModelForCausalLM

    from eagle_recipes.data.chat import load_tokenizer, render_batch
    from eagle_recipes.draft.config import BaseModelFacts, build_draft_config
    from eagle_recipes.draft.model import build_draft
    from eagle_recipes.draft.ttt import TTTObjective
    from eagle_recipes.draft.vocab import top_k_ids
    from eagle_recipes.stages.train import target_outputs

    torch.set_num_threads(args.threads)
    path = model_path()
    tokenizer = load_tokenizer(path)
    target = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    target.requires_grad_(False)
    batches = [r for r in render_batch(tokenizer, [c["conversations"] for c in conversations(args.steps + 1)], 512)]
    counts = np.bincount(np.concatenate([r.input_ids for r in batches]), minlength=len(tokenizer))
    draft_ids = torch.from_numpy(np.sort(np.concatenate([top_k_ids(counts, args.draft_vocab),
                                                         np.setdiff1d(np.arange(len(tokenizer)),
                                                                      np.flatnonzero(counts))]))[:args.draft_vocab])
    facts = BaseModelFacts.from_config(json.loads((Path(path) / "config.json").read_text()))
    config = build_draft_config("eagle3", {}, facts, args.draft_vocab)
    draft = build_draft(config)
    objective = TTTObjective(draft, args.ttt_steps, 0.8)
    optimizer = torch.optim.AdamW(draft.parameters(), lr=1e-4)
    draft_head = target.lm_head.weight.index_select(0, draft_ids).contiguous()
    embed = target.get_input_embeddings()

    forward_s = step_s = 0.0
    tokens = 0
    for index, rendered in enumerate(batches):
        input_ids = torch.tensor([rendered.input_ids])
        loss_mask = torch.tensor([rendered.loss_mask])
        padding = torch.ones_like(input_ids)
        started = time.perf_counter()
        with torch.no_grad():
            target(input_ids=input_ids)  # the baseline: the base model's plain forward
        forwarded = time.perf_counter()
        outputs = target_outputs(target, input_ids, loss_mask, padding, config.aux_layer_ids, draft_head, "eagle3")
        loss, _ = objective(outputs, embed)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        stepped = time.perf_counter()
        if index:  # the first batch warms up allocators and kernels
            forward_s += forwarded - started
            step_s += stepped - forwarded
            tokens += input_ids.numel()
    print(f"SmolLM2-135M, EAGLE-3, {args.ttt_steps} TTT steps, draft vocab {args.draft_vocab}, "
          f"{args.steps} sequences ({tokens} tokens), {args.threads} threads")
    print(f"base model forward:  {tokens / forward_s:8.1f} tokens/s")
    print(f"training step:       {tokens / step_s:8.1f} tokens/s")
    print(f"step time / forward time: {step_s / forward_s:.2f}x")


if __name__ == "__main__":
    main()
