"""How much a draft learns per step and per CPU-minute: train the recipe's draft from one synthesized data set at
several step counts (and with other settings), and measure each one's acceptance length.

    .venv/bin/python benchmarks/learning_curve.py [--run runs/quickstart] [--steps 240,480,960,1920]
        [--variant NAME:key=value,key=value ...] [--engine simulated|vllm] [--out benchmarks/out/learning_curve]
        [--quick]

It runs the recipe's graph up to the features training reads, with `train.features = "cached"` (synthesize,
tokenize, calibrate, capture; finished stages reused, as `eagle-recipes tune` does), then trains each (variant,
steps) in this process through the training stage's own worker (eagle_recipes/training/loop.py: its loss, schedule,
data order, gradient accumulation and precision). Training reads the captured features, so its minutes are the
draft's alone; the table also gives the minutes the same steps take online (base forward included), from timed
online steps.

Acceptance length tau, greedy, k = the recipe's `eval.num_speculative_tokens`, on MT-bench (80 first turns) and on
the run's held-out conversations:
- `simulated` (default): the target's own greedy reply to each prompt is fed through the draft's training-time-
  test unroll, teacher forced, and greedy chain drafting is replayed over it (the training loop's simulation,
  `draft/reference.py`). That is what vLLM computes at temperature 0 up to floating-point ties; `--engine vllm`
  exports each draft and measures it in real vLLM instead (about 2 minutes each on 2 cores). MT-bench's replies
  come from vLLM once and are captured like the held-out split (kept in `--out`).

Writes `<out>/results.jsonl` (one line per trained draft), `<out>/learning_curve.md` and `<out>/learning_curve.png`
(tau against training tokens and against CPU-minutes of training). Variant keys: any `[train]` key of the recipe,
`algorithm` (another drafter: eagle3, dflash) and `draft.<override>`; each variant is checked as the recipe with
those overrides. `--minutes M` trains each variant for as many steps as fit M minutes (equal compute; its step
timed as a tune trial's is); `--sizes 80,160,320 --epochs 6.6` is the data axis: tau against the number of
training conversations (nested subsets: the first N of the training split, as `tune.conversations` takes them).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, Iterator

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import PROJECT, hardware  # noqa: E402
from curve_plots import plot_curves, plot_data_axis, plot_levers  # noqa: E402

from eagle_recipes.data.formats import HELD_OUT_SPLIT  # noqa: E402
from eagle_recipes.run_folder import HELD_OUT_FOLDER, TOKENIZE, RunFolder  # noqa: E402

Log = Callable[[str], None]
CACHED = 'train.features="cached"'  # the draft's minutes alone: the base model runs once, in the capture stage
MT_BENCH, FEATURES = "mt-bench", "features"  # MT-bench's reply sequences in <out>/mt-bench, features in <out>/features
ONLINE_TIMED_STEPS = 20
LOGGED_EVERY = 100


@dataclass
class Variant:
    name: str
    train: dict
    draft: dict

    def overrides(self) -> list[str]:
        """The variant as the recipe's KEY=VALUE overrides (`algorithm` picks the drafter)."""
        from eagle_recipes.recipe.tune_space import override_text

        texts = [override_text("draft.algorithm" if key == "algorithm" else f"train.{key}", value)
                 for key, value in self.train.items()]
        return texts + [override_text(f"draft.overrides.{key}", value) for key, value in self.draft.items()]


@dataclass(frozen=True)
class PlannedRun:
    variant: Variant
    steps: int = 0  # this many optimizer steps ...
    epochs: float = 0.0  # ... or, when steps is 0, this many epochs of its sequences
    sequences: int = 0  # train on the first this many training sequences (0: all)


def parse_variant(text: str) -> Variant:
    name, _, assignments = text.partition(":")
    train, draft = {}, {}
    for item in filter(None, assignments.split(",")):
        key, value = item.split("=", 1)
        try:  # numbers, true/false, lists; anything else is a string (loss=tv)
            parsed = json.loads(value)
        except ValueError:
            parsed = value
        (draft if key.startswith("draft.") else train)[key.removeprefix("draft.")] = parsed
    return Variant(name, train, draft)


# ---------------------------------------------------------------- the recipe, its features and its configs
def load_variant(path: Path, run: str, overrides: list[str]):
    """The recipe with cached features and these overrides, writing to `run` when given (else its output_dir)."""
    from eagle_recipes.recipe import load_recipe

    recipe = load_recipe(path, overrides=[CACHED, *overrides], check_space=False)
    return replace(recipe, data={**recipe.data, "output_dir": str(Path(run).resolve())}) if run else recipe


def run_graph_to_features(recipe) -> dict[str, Path]:
    """The graph up to what training reads (finished stages reused): that upstream, by stage name. Ray stops
    afterwards: its idle daemons would share the cores with the timed training."""
    import ray

    from eagle_recipes.tuning.tuner import run_features

    upstream = run_features(recipe, None, verbose=False)
    ray.shutdown()
    return upstream


def training_of(recipe, upstream: dict[str, Path], out: Path, threads: int, log: Log):
    """The recipe's PreparedTraining as the train stage and a tune trial build it, simulating on the held-out
    split, with this benchmark's threads. The checkpoint folder is never written (nothing here saves), so every
    draft starts fresh."""
    from eagle_recipes.stages.train import prepare_training

    prepared = prepare_training(recipe, upstream, out, *RunFolder.trial_training_files(out / "training"),
                                simulate=True, log=log)
    return replace(prepared, config=replace(prepared.config, threads=threads, simulate_every=1, keep_best=False))


# ---------------------------------------------------------------- MT-bench: the target's replies, captured once
def mt_bench_replies(model_path: str, max_tokens: int, cache: Path,
                     max_prompts: int = 0) -> list[tuple[list[int], int]]:
    """(token ids of prompt + the target's greedy reply, prompt length) for MT-bench's first turns (vLLM once)."""
    if cache.exists():
        return [tuple(row) for row in json.loads(cache.read_text())]
    from transformers import AutoTokenizer

    from eagle_recipes.engines.placement import apply_engine_env
    from eagle_recipes.evaluation.prompt_sets import mt_bench
    from eagle_recipes.evaluation.vllm_path import engine, generate

    apply_engine_env()
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    prompts = mt_bench(max_prompts).prompts
    llm = engine(model_path, None, {}, 1, "auto")  # the base alone
    replies, _, _ = generate(llm, prompts, max_tokens)
    del llm
    rows = []
    for messages, reply in zip(prompts, replies):
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        prompt = tokenizer(text, add_special_tokens=False)["input_ids"]
        rows.append((prompt + reply, len(prompt)))
    cache.write_text(json.dumps(rows))
    return rows


def save_replies(rows: list[tuple[list[int], int]], folder: Path) -> None:
    """The replies as sequences whose labels are the reply tokens: the held-out split's form, which the training
    loop's simulation replays (drafting from the end of the prompt to the end of the reply)."""
    import numpy as np

    from eagle_recipes.data.sequences import Sequences

    ids = np.concatenate([np.asarray(tokens, np.int32) for tokens, _ in rows])
    mask = np.concatenate([np.arange(len(tokens)) >= prompt for tokens, prompt in rows]).astype(np.int8)
    offsets = np.concatenate([[0], np.cumsum([len(tokens) for tokens, _ in rows])]).astype(np.int64)
    Sequences.from_arrays(ids, mask, offsets).save(folder)


def capture_mt_bench(recipe, out: Path, quick: bool) -> None:
    """MT-bench's replies in <out>/mt-bench and their features, captured by the recipe's capture engine in this
    process (the capture stage's code, one shard), unless a whole capture of the same tokens is there."""
    from eagle_recipes.data.feature_cache import shard_is_whole, shard_path
    from eagle_recipes.data.sequences import Sequences, has_shard
    from eagle_recipes.engines.capture import CaptureActor
    from eagle_recipes.recipe.base_model import base_model_path
    from eagle_recipes.recipe.draft_config import capture_spec

    model_path = base_model_path(recipe)
    if not has_shard(out / MT_BENCH, 0):
        rows = mt_bench_replies(model_path, 32 if quick else recipe.eval.max_tokens, out / "mt_bench.json",
                                8 if quick else 0)
        save_replies(rows, out / MT_BENCH)
    sequences = Sequences.load(out / MT_BENCH)
    if shard_is_whole(shard_path(out / FEATURES / MT_BENCH, 0), 0, sequences.ids_between(0, sequences.count)):
        return
    spec = capture_spec(recipe, model_path, out, out / FEATURES)
    CaptureActor(spec.to_dict()).capture_shard(0, 0, sequences.count, MT_BENCH)


def eval_sets(training, out: Path) -> dict[str, Any]:
    """{name: HeldOut}: MT-bench's replies and the run's held-out split (when it has one), each served by the
    training's own feature source."""
    from eagle_recipes.data.sequences import Sequences
    from eagle_recipes.training.simulation import HeldOut

    mt_bench = HeldOut(Sequences.load(out / MT_BENCH),
                       training.target.for_split(str(out / MT_BENCH), str(out / FEATURES / MT_BENCH)))
    return {MT_BENCH: mt_bench, **({HELD_OUT_SPLIT: training.held_out} if training.held_out else {})}


# ---------------------------------------------------------------- train one draft, evaluate it
def train_draft(config, run: PlannedRun, log: Log):
    """(the Training at its last step, timing): `run`'s steps of the training loop."""
    from eagle_recipes.training.loop import setup, train_step

    training = setup(replace(config, max_sequences=run.sequences), rank=0, world=1, local_rank=0)
    training.total = run.steps or max(1, round(run.epochs * training.per_epoch))  # the schedule spans the run
    started, wall = time.process_time(), time.time()
    while training.step < training.total:
        metrics = train_step(training)
        if training.step % LOGGED_EVERY == 0:
            log(f"  {run.variant.name} step {training.step}/{training.total} loss0 {metrics['loss'][0]:.3f} "
                f"({time.time() - wall:.0f} s)")
    training.draft.eval()
    return training, {"cpu_s": time.process_time() - started, "wall_s": time.time() - wall,
                      "tokens": trained_tokens(training), "epochs": training.total / training.per_epoch}


def trained_tokens(training) -> int:
    """Tokens (padding left out) of every micro-batch the run took: the loop's data order, replayed."""
    import numpy as np

    from eagle_recipes.training.batches import planned_micro_batches

    config, sequences = training.config, training.sequences
    lengths = np.diff(sequences.offsets)
    batches = planned_micro_batches(sequences.count, config.seed, training.per_epoch, 0, training.total, 0, 1,
                                    config.grad_accum, config.batch_size)
    return int(sum(int(lengths[indices].sum()) for indices in batches))


def simulated_tau(training, sets: dict[str, Any]) -> dict[str, dict]:
    """The training loop's simulated acceptance of the draft on each set."""
    from eagle_recipes.training.loop import simulate

    taus = {}
    for name, held_out in sets.items():
        simulated = simulate(replace(training, held_out=held_out))
        taus[name] = {"acceptance_length": round(simulated["simulated_tau"], 4),
                      "per_position": simulated["simulated_per_position"]}
    return taus


def vllm_tau(training, prepared, recipe, out: Path) -> dict:
    """The draft exported and measured on MT-bench in real vLLM."""
    from eagle_recipes.draft.export import export_layout, speculative_config, write_draft
    from eagle_recipes.evaluation.prompt_sets import mt_bench
    from eagle_recipes.evaluation.vllm_path import evaluate_vllm

    folder, config, mapping = out / "draft", prepared.draft_config, prepared.mapping
    model_path = training.config.model_path
    shutil.rmtree(folder, ignore_errors=True)
    k = recipe.eval.num_speculative_tokens
    write_draft(folder, training.draft.state_dict(), config, export_layout(config.algorithm, "flat"), "float32",
                model_path, k, mapping.d2t, mapping.t2d)
    report, _ = evaluate_vllm(model_path, str(folder), speculative_config(config.algorithm), k, [mt_bench()],
                              recipe.eval.max_tokens)
    return {name: {"acceptance_length": round(e.acceptance_length, 4),
                   "per_position": [round(p, 4) for p in e.per_position]} for name, e in report.items()}


def online_step_seconds(config) -> float:
    """CPU-seconds of one online step (base forward + draft) of the training loop, after a warm-up step, for the
    minutes column."""
    from eagle_recipes.training.loop import setup, train_step

    training = setup(replace(config, features="online", simulate_every=0), rank=0, world=1, local_rank=0)
    train_step(training)
    started = time.process_time()
    for _ in range(ONLINE_TIMED_STEPS):
        train_step(training)
    return (time.process_time() - started) / ONLINE_TIMED_STEPS


# ---------------------------------------------------------------- the command
def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipe", default=str(PROJECT / "recipes" / "quickstart.toml"))
    parser.add_argument("--run", default="", help="the recipe's output folder (default: its output_dir)")
    parser.add_argument("--steps", default="240,480,960,1920")
    parser.add_argument("--variant", action="append", default=[], help="NAME:key=value,... (default: the recipe)")
    parser.add_argument("--engine", choices=["simulated", "vllm"], default="simulated")
    parser.add_argument("--out", default=str(PROJECT / "benchmarks" / "out" / "learning_curve"))
    parser.add_argument("--threads", type=int, default=0, help="torch threads (default: train.cpus_per_worker)")
    parser.add_argument("--minutes", type=float, default=0,
                        help="equal minutes: each variant trains as many steps as fit this many minutes")
    parser.add_argument("--sizes", default="",
                        help="the data axis: training conversations per run, e.g. 80,160,320 (nested subsets)")
    parser.add_argument("--epochs", type=float, default=6.6, help="epochs of each --sizes run")
    parser.add_argument("--quick", action="store_true",
                        help="8 MT-bench prompts, 10 steps: checks that the benchmark runs, not a figure")
    parser.add_argument("--report-only", action="store_true",
                        help="rewrite the table and the figure from <out>/results.jsonl (every run so far), train nothing")
    args = parser.parse_args()
    if args.quick:
        args.steps = "10"
    return args


def main() -> None:
    args = parse_args()
    variants = [parse_variant(v) for v in args.variant] or [Variant("recipe", {}, {})]  # bad ones fail now
    out = Path(args.out)
    if args.report_only:
        report(out)
        return

    import torch

    from eagle_recipes.data.sequences import sequence_count
    from eagle_recipes.devices import torch_threads

    log: Log = lambda message: print(message, flush=True)  # noqa: E731
    recipe = load_variant(Path(args.recipe), args.run, [])
    threads = args.threads or torch_threads(recipe.train.cpus_per_worker)
    torch.set_num_threads(threads)
    log(f"measured on {hardware()}")
    out.mkdir(parents=True, exist_ok=True)
    upstream = run_graph_to_features(recipe)
    capture_mt_bench(recipe, out, args.quick)
    prepared = {v.name: training_of(load_variant(Path(args.recipe), args.run, v.overrides()), upstream, out,
                                    threads, log) for v in variants}  # each variant checked as a recipe
    online_s = online_step_seconds(training_of(recipe, upstream, out, threads, log).config)
    held_out = upstream[TOKENIZE] / HELD_OUT_FOLDER
    log(f"{prepared[variants[0].name].count} training sequences; eval: {MT_BENCH} "
        f"{sequence_count(out / MT_BENCH)}, {HELD_OUT_SPLIT} {sequence_count(held_out)}; "
        f"online step {online_s:.2f} CPU-s")
    for run in planned_runs(args, variants, prepared, log):
        training, timing = train_draft(prepared[run.variant.name].config, run, log)
        if args.engine == "vllm":
            tau = vllm_tau(training, prepared[run.variant.name], recipe, out)
        else:
            tau = simulated_tau(training, eval_sets(training, out))
        row = result_row(run, training, timing, tau, online_s, args.engine)
        with open(out / "results.jsonl", "a", encoding="utf-8") as handle:
            handle.write(json.dumps(row) + "\n")
        log(f"{run.variant.name} {row['steps']} steps: " + ", ".join(
            f"{n} tau {t['acceptance_length']:.3f} {t['per_position']}" for n, t in tau.items())
            + f" ({timing['wall_s']:.0f} s)")
    report(out)


def result_row(run: PlannedRun, training, timing: dict, tau: dict, online_s: float, engine: str) -> dict:
    """One line of results.jsonl."""
    variant, steps = run.variant, training.total
    return {"variant": variant.name,
            "settings": {**variant.train, **{f"draft.{key}": value for key, value in variant.draft.items()}},
            "steps": steps, "epochs": round(timing["epochs"], 2), "tokens": timing["tokens"],
            "train_cpu_min": round(timing["cpu_s"] / 60, 2), "train_wall_min": round(timing["wall_s"] / 60, 2),
            "online_cpu_min": round(steps * online_s / 60, 2), "engine": engine, "tau": tau,
            "conversations": training.sequences.count, "hardware": hardware()}


def planned_runs(args, variants: list[Variant], prepared: dict, log: Log) -> Iterator[PlannedRun]:
    """Every draft to train:
    - `--sizes`: the data axis, for each size the first that many training sequences, trained for `--epochs`;
    - `--minutes`: each variant for as many steps as fit that many minutes (its step timed first, as a tune
      trial's is);
    - else every variant at every `--steps`."""
    from eagle_recipes.tuning.trial import timed_step_seconds

    if args.sizes:
        for size in [int(s) for s in args.sizes.split(",")]:
            for variant in variants:
                yield PlannedRun(variant, epochs=args.epochs, sequences=size)
        return
    for variant in variants:
        if args.minutes:
            step_s = timed_step_seconds(prepared[variant.name].config)
            steps = max(1, int(args.minutes * 60 / step_s))
            log(f"{variant.name}: {step_s:.3f} s a step: {steps} steps in {args.minutes:g} minutes")
            yield PlannedRun(variant, steps=steps)
        else:
            for steps in [int(s) for s in args.steps.split(",")]:
                yield PlannedRun(variant, steps=steps)


def report(out: Path) -> None:
    """The table and the figure over every run in <out>/results.jsonl."""
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines() if line.strip()]
    sets = list(rows[0]["tau"])
    table = ["| variant | settings | conversations | steps | epochs | tokens | train CPU-min | "
             + " | ".join(f"tau {n}" for n in sets) + " |", "|---|---|---|---|---|---|---|" + "---|" * len(sets)]
    for row in rows:
        settings = ", ".join(f"{k}={v}" for k, v in row["settings"].items()) or "the recipe"
        table.append(f"| {row['variant']} | {settings} | {row.get('conversations', '-')} | {row['steps']} | "
                     f"{row['epochs']} | {row['tokens']} | {row['train_cpu_min']} | "
                     + " | ".join(f"{row['tau'][n]['acceptance_length']:.3f}" for n in sets) + " |")
    (out / "learning_curve.md").write_text("\n".join(table) + "\n")
    print("\n".join(table))
    simulated = [r for r in rows if r["engine"] == "simulated"]
    plot_curves(simulated, out / "learning_curve.png")
    plot_levers(simulated, out / "levers.png")
    if len({r.get("conversations") for r in simulated}) > 1:
        plot_data_axis(simulated, out / "data_axis.png")


if __name__ == "__main__":
    main()
