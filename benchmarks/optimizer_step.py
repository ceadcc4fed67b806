"""The optimizer step of a recipe's draft, against AdamW's, on this CPU and on an AVX2-only CPU.

Builds the recipe's draft (its base model's shape from the catalog config, its draft overrides, the draft
vocabulary size the quickstart keeps), gives every parameter a random gradient and times `optimizer.step()` as the
training loop builds it (`build_optimizer`): AdamW, and Muon (torch's where bfloat16 is native, the float32
iteration where it is emulated); the recipe's optimizer is one of the two. The same measurement runs a second
time in a child process whose torch kernels and oneDNN are restricted to AVX2 (`ATEN_CPU_CAPABILITY=avx2`,
`ONEDNN_MAX_CPU_ISA=AVX2`): to torch that process is an AVX2-only CPU without native bfloat16, which is where
torch's own Muon (bfloat16 Newton-Schulz) cost 25 s a quickstart step. `--torch-muon` also times torch's Muon as it
ships, one step (seconds where bfloat16 is emulated).

Each line names the CPU capability it was measured on; the last says whether the recipe's optimizer step costs at
most AdamW's plus 0.25 s on every kind measured.

    .venv/bin/python benchmarks/optimizer_step.py [--recipe recipes/quickstart.toml] [--steps 20] [--threads 2]
        [--kinds native,avx2] [--torch-muon] [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import tomllib
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import PROJECT  # noqa: E402

AVX2_ONLY = {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2"}
BOUND_S = 0.25  # what the recipe's optimizer may cost beyond AdamW's, per step


def recipe_draft(recipe_path: Path, draft_vocab: int):
    """(draft module, the recipe's optimizer name, its muon_lr_scale) from the recipe's TOML and its config file."""
    from eagle_recipes.draft.config import BaseModelFacts
    from eagle_recipes.draft.drafters import build_draft, build_draft_config

    recipe = tomllib.loads(recipe_path.read_text())
    config = json.loads((recipe_path.parent / recipe["model"]["config"]).read_text())
    draft = recipe.get("draft", {})
    built = build_draft(build_draft_config(draft.get("algorithm", "eagle3"), draft.get("overrides", {}),
                                           BaseModelFacts.from_config(config), draft_vocab))
    train = recipe.get("train", {})
    return built, train.get("optimizer", "adamw"), train.get("muon_lr_scale", 1.0)


def time_steps(optimizer, draft, steps: int) -> float:
    """Median seconds of `optimizer.step()` over `steps` steps, after one untimed step."""
    import torch

    times = []
    for step in range(steps + 1):
        for parameter in draft.parameters():
            parameter.grad = torch.randn_like(parameter) * 1e-3
        started = time.perf_counter()
        optimizer.step()
        if step:
            times.append(time.perf_counter() - started)
    return sorted(times)[len(times) // 2]


def measure(args) -> dict:
    import torch

    from eagle_recipes.devices import describe_hardware
    from eagle_recipes.training.optimizers import MuonWithAdamW, build_optimizer

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    draft, kind, muon_lr_scale = recipe_draft(Path(args.recipe), args.draft_vocab)
    result = {"hardware": describe_hardware(torch.device("cpu")), "optimizer": kind}
    result["adamw_s"] = time_steps(build_optimizer(draft, "adamw", 1e-3, 0.0), draft, args.steps)
    muon = build_optimizer(draft, "muon", 1e-3, 0.0, muon_lr_scale)  # as training builds it on this CPU
    result["muon_s"], result["muon_class"] = time_steps(muon, draft, args.steps), type(muon.muon).__name__
    if args.torch_muon:
        named = [(n, p) for n, p in draft.named_parameters()]
        result["torch_muon_s"] = time_steps(MuonWithAdamW(named, 1e-3, 0.0, muon_lr_scale), draft, 1)
    result["recipe_s"] = result["muon_s"] if kind == "muon" else result["adamw_s"]
    return result


def measure_as(kind: str, args) -> dict:
    """The measurement in a child process: `native` as this CPU is, `avx2` restricted to AVX2."""
    env = {**os.environ, **(AVX2_ONLY if kind == "avx2" else {})}
    command = [sys.executable, __file__, "--child", "--recipe", str(args.recipe), "--steps", str(args.steps),
               "--threads", str(args.threads), "--draft-vocab", str(args.draft_vocab)]
    result = subprocess.run(command + (["--torch-muon"] if args.torch_muon else []), env=env, capture_output=True,
                            text=True, cwd=PROJECT)
    if result.returncode:
        raise SystemExit(result.stderr[-3000:])
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipe", default=str(PROJECT / "recipes" / "quickstart.toml"))
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--threads", type=int, default=2, help="the quickstart's cpus_per_worker")
    parser.add_argument("--draft-vocab", type=int, default=3434, help="the quickstart's (3,434 tokens occur)")
    parser.add_argument("--kinds", default="native,avx2", help="native (this CPU as it is), avx2 (restricted)")
    parser.add_argument("--torch-muon", action="store_true", help="also one step of torch's Muon as it ships")
    parser.add_argument("--quick", action="store_true", help="two steps each: checks that it runs, not a figure")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.quick:
        args.steps = 2
    if args.child:
        print(json.dumps(measure(args)))
        return
    within = True
    for kind in args.kinds.split(","):
        result = measure_as(kind, args)
        extra = result["recipe_s"] - result["adamw_s"]
        within &= extra <= BOUND_S
        torch_muon = f", torch's Muon as shipped {result['torch_muon_s']:.2f} s" if "torch_muon_s" in result else ""
        print(f"{kind} ({result['hardware']}, {args.threads} threads): optimizer step adamw {result['adamw_s']:.3f} s, "
              f"muon {result['muon_s']:.3f} s ({result['muon_class']}, {result['muon_s'] - result['adamw_s']:+.3f} s)"
              f"{torch_muon}; the recipe's ({result['optimizer']}) {extra:+.3f} s over adamw", flush=True)
    print(f"recipe's optimizer step within AdamW's + {BOUND_S} s on every kind measured: "
          f"{'yes' if within else 'NO'}")


if __name__ == "__main__":
    main()
