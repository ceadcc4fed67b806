"""Streamed against online training on this machine: the recipe's draft trained the same steps on the same data
with the base model in the worker (online) and in a feature server beside it (streamed), steps/s of each.

    .venv/bin/python benchmarks/streamed_steps.py [--recipe recipes/quickstart.toml] [--output-dir runs/quickstart]
        [--steps 60] [--quick]

It runs the recipe's graph up to what training reads (synthesize, tokenize, calibrate; finished stages reused:
after `make quickstart` nothing runs again), then trains `--steps` steps online and as many streamed, one after
the other in this process's embedded Ray, into <output-dir>/bench-streamed-steps/ (never the run's own train
folder). Streamed, the cores the recipe gives training (train.num_workers x train.cpus_per_worker) are split
between the training worker and the feature server as the train stage splits them (`plan` shows the split).

A step's time is the training loop's own measure (metrics.jsonl's phase seconds; streamed, the wait for features
is in its forward); the figure is each mode's median step after the first WARMUP_STEPS (allocator and
kernel warm-up, the first requests). Its last line: `streamed / online steps/s = X.XXx`. Quick mode: the tiny
target (a random 6-layer Llama) on 40 written conversations, a few steps: that it runs, not a figure.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import PROJECT, build_tiny_target, conversations, hardware  # noqa: E402

from eagle_recipes.run_folder import RunFolder  # noqa: E402

MODES = ("online", "streamed")
WARMUP_STEPS = 5
BENCH_FOLDER = "bench-streamed-steps"


def load(recipe_path: Path, overrides: list[str]):
    from eagle_recipes.recipe import load_recipe

    return load_recipe(recipe_path, overrides=overrides, check_space=False)


def upstream_of(recipe) -> dict[str, Path]:
    """The graph up to what training reads (finished stages reused), by stage name; Ray stays up, quiet, for the
    training runs (an embedded one sized as `run` sizes it)."""
    from eagle_recipes.graph.runner import init_ray
    from eagle_recipes.tuning.tuner import run_features

    upstream = run_features(recipe, None, verbose=False)
    init_ray(recipe, None)  # already up when a stage ran; else started here
    return upstream


def step_seconds(recipe, upstream: dict[str, Path], folder: Path) -> tuple[list[float], str]:
    """Each step's seconds (the loop's phases) of `recipe` trained into `folder`, and how its cores were used."""
    from eagle_recipes.stages.train import prepare_training
    from eagle_recipes.training.trainer import fit

    shutil.rmtree(folder, ignore_errors=True)
    checkpoints, metrics = RunFolder.trial_training_files(folder)
    prepared = prepare_training(recipe, upstream, folder, checkpoints, metrics, simulate=False, log=print)
    config = prepared.config
    servers = config.feature_servers.get("spec", {}).get("threads")
    cores = f"worker {config.threads} thread(s)" + (f", feature server {servers}" if servers else "")
    fit(config, recipe.train.num_workers, prepared.worker_cpus, folder / "ray")
    rows = [json.loads(line) for line in metrics.read_text().splitlines()]
    return [sum(row["seconds"].values()) for row in rows], cores


def quick_recipe(folder: Path) -> tuple[Path, list[str]]:
    """The tiny target on written conversations (no synthesis to wait for)."""
    model = build_tiny_target(folder / "tiny-target")
    data = folder / "conversations.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in conversations(40)))
    return PROJECT / "recipes" / "quickstart.toml", [
        f"model.path={model}", "data.prompts=[]", f'data.conversations=["{data}"]', "synthesis.self_prompts=0",
        "data.holdout_fraction=0", f"output_dir={folder / 'run'}"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipe", type=Path, default=PROJECT / "recipes" / "quickstart.toml")
    parser.add_argument("--output-dir", default="", help="the run folder (default: the recipe's output_dir)")
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--quick", action="store_true", help="the tiny target, a few steps: that it runs")
    args = parser.parse_args()
    scratch = tempfile.TemporaryDirectory() if args.quick else None
    recipe_path, overrides = quick_recipe(Path(scratch.name)) if scratch else (args.recipe.resolve(), [])
    steps = WARMUP_STEPS + 3 if args.quick else args.steps
    if args.output_dir:
        overrides.append(f"output_dir={Path(args.output_dir).resolve()}")
    common = [*overrides, f"train.max_steps={steps}", f"train.checkpoint_every={steps}", "train.simulate_every=0",
              "train.keep_best=false", "train.report_to=[]"]
    base = load(recipe_path, [*common, "train.features=online"])  # no capture: neither mode reads it
    upstream = upstream_of(base)
    out = Path(base.output_dir) / BENCH_FOLDER
    rates = {}
    print(f"{base.name}: {steps} steps each, train.num_workers = {base.train.num_workers} x "
          f"{base.train.cpus_per_worker} CPU")
    print(f"measured on {hardware()}")
    for mode in MODES:
        recipe = load(recipe_path, [*common, f"train.features={mode}"])
        seconds, cores = step_seconds(recipe, upstream, out / mode)
        median = statistics.median(seconds[WARMUP_STEPS:])
        rates[mode] = 1 / median
        print(f"  {mode}: {rates[mode]:.2f} steps/s (median step {median * 1000:.0f} ms over steps "
              f"{WARMUP_STEPS + 1}-{len(seconds)}; {cores})")
    if scratch:
        scratch.cleanup()
    print(f"streamed / online steps/s = {rates['streamed'] / rates['online']:.2f}x")


if __name__ == "__main__":
    main()
