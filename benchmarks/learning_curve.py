"""How much a draft learns per step and per CPU-minute: train the recipe's draft from one synthesized data set at
several step counts (and with other settings), and measure each one's acceptance length.

    .venv/bin/python benchmarks/learning_curve.py [--run runs/quickstart] [--steps 240,480,960,1920]
        [--variant NAME:key=value,key=value ...] [--engine simulated|vllm] [--out benchmarks/out/learning_curve]
        [--quick]

It reads the run's synthesized conversations and draft vocabulary (run `eagle-recipes run RECIPE --only
synthesize` and `--only calibrate` first), captures the base model's features of every training conversation
once (kept in `--out`), then trains each (variant, steps) in this process with the training stage's own loss,
schedule and data order. Training reads the captured features, so its minutes are the draft's alone; the table
also gives the minutes the same steps take online (base forward included), from a timed online step.

Acceptance length tau, greedy, k = the recipe's `eval.num_speculative_tokens`, on MT-bench (80 first turns) and on
the run's held-out conversations:
- `simulated` (default): the target's own greedy reply to each prompt is fed through the draft's training-time-
  test unroll, teacher forced, and greedy chain drafting is replayed over it (`draft/reference.py`). That is what
  vLLM computes at temperature 0 up to floating-point ties; `--engine vllm` exports each draft and measures it in
  real vLLM instead (about 2 minutes each on 2 cores).

Writes `<out>/results.jsonl` (one line per trained draft), `<out>/learning_curve.md` and `<out>/learning_curve.png`
(tau against training tokens and against CPU-minutes of training; capturing the features is a one-time cost,
printed when they are captured). Variant keys: any `[train]` field of the recipe (lr, ttt_steps, ttt_decay,
warmup_ratio, schedule, weight_decay, loss_on, loss, optimizer, muon_lr_scale, feature_noise, anchors,
block_loss_decay), `algorithm` (another drafter: eagle3, dflash) and `draft.<override>`.

`--minutes M` trains each variant for as many steps as fit M minutes (equal compute); `--sizes 80,160,320
--epochs 6.6` is the data axis: tau against the number of training conversations (nested subsets of the run's,
each trained for the same epochs).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import PROJECT, hardware  # noqa: E402
from curve_plots import plot_curves, plot_data_axis, plot_levers  # noqa: E402

from eagle_recipes.data.formats import HELD_OUT_SPLIT  # noqa: E402
from eagle_recipes.run_folder import D2T_FILE  # noqa: E402


MASK_TOKEN = [0]  # DFlash's mask token of the base model's tokenizer (set once in main)


@dataclass
class Variant:
    name: str
    train: dict
    draft: dict


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


# ---------------------------------------------------------------- features, captured once
def capture(target, sequences: list[tuple[list[int], list[int]]], aux_ids, draft_ids, algorithm: str, log):
    """Per sequence: TargetOutputs of one base forward (batch 1), kept on the CPU."""
    import torch

    from eagle_recipes.training.target_source import target_outputs

    captured, started = [], time.time()
    for index, (ids, mask) in enumerate(sequences):
        input_ids = torch.tensor([ids])
        out = target_outputs(target, input_ids, torch.tensor([mask]), torch.ones_like(input_ids), aux_ids,
                             draft_ids, algorithm)
        captured.append(out)
        if index % 50 == 0:
            log(f"  captured {index}/{len(sequences)} sequences ({time.time() - started:.0f} s)")
    return captured, time.time() - started


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


def holdout_replies(recipe, run: Path, model_path: str) -> list[tuple[list[int], int]]:
    """The held-out conversations' first exchange: the base model's own greedy reply (synthesized at T=0)."""
    from eagle_recipes.data.chat import load_tokenizer
    from eagle_recipes.run_folder import SYNTHESIZE
    from eagle_recipes.recipe.training_data import conversation_sources, read_conversations
    from eagle_recipes.recipe.base_model import chat_template_file

    tokenizer = load_tokenizer(model_path, chat_template_file(recipe), recipe.model.trust_remote_code)
    rows = []
    sources = conversation_sources(recipe, {SYNTHESIZE: run / SYNTHESIZE})
    for conversation in read_conversations(sources, recipe, split=HELD_OUT_SPLIT):
        turns = conversation["conversations"]
        first_user = next(i for i, t in enumerate(turns) if t["role"] == "user")
        if first_user + 1 >= len(turns) or turns[first_user + 1]["role"] != "assistant":
            continue
        prompt_text = tokenizer.apply_chat_template(turns[: first_user + 1], tokenize=False, add_generation_prompt=True)
        prompt = tokenizer(prompt_text, add_special_tokens=False)["input_ids"]
        reply = tokenizer(turns[first_user + 1]["content"], add_special_tokens=False)["input_ids"]
        rows.append((prompt + reply + [tokenizer.convert_tokens_to_ids("<|im_end|>")], len(prompt)))
    return rows


# ---------------------------------------------------------------- train one draft, evaluate it
def train_draft(variant: Variant, steps: int, recipe, facts, mapping, captured, draft_head, embed, log):
    import torch

    from eagle_recipes.draft.drafters import build_draft, build_draft_config, drafter
    from eagle_recipes.draft.target_outputs import TargetOutputs
    from eagle_recipes.training.batches import micro_batch_indices, steps_per_epoch
    from eagle_recipes.training.config import TrainConfig
    from eagle_recipes.training.loop import with_feature_noise
    from eagle_recipes.training.optimizers import build_optimizer, set_learning_rate
    from eagle_recipes.training.schedule import learning_rate

    settings = {**recipe.data["train"], **variant.train}
    algorithm = variant.train.get("algorithm", recipe.draft.algorithm)  # a variant may train another drafter
    overrides = {**recipe.draft.overrides, **variant.draft}
    spec = drafter(algorithm)
    if spec.needs_mask_token:
        overrides.setdefault("mask_token_id", MASK_TOKEN[0])
    config = build_draft_config(algorithm, overrides, facts, mapping.draft_vocab_size)
    torch.manual_seed(settings.get("seed", 0))
    draft = build_draft(config)
    if settings.get("init_from_target"):
        with torch.no_grad():
            draft.lm_head.weight.copy_(draft_head)
    optimizer = build_optimizer(draft, settings.get("optimizer", "adamw"), settings["lr"],
                                settings.get("weight_decay", 0.0), settings.get("muon_lr_scale", 1.0))
    per_epoch = steps_per_epoch(len(captured), 1, 1, 1)
    # the drafter's own training objective (the TTT unroll, or DFlash's blocks) with the variant's settings
    objective = spec.objective(draft, TrainConfig.from_train_table(
        settings, model_path="", draft_config=config.to_dict(), vocab_file="", data_folder="", checkpoint_dir="",
        metrics_file="", features="cached", capture_dir="", threads=1, use_gpu=False, precision="float32",
        simulate_k=recipe.eval.num_speculative_tokens))
    started, tokens = time.process_time(), 0
    wall = time.time()
    warm = None  # wall time once the first steps (allocator and kernel warm-up) are done
    for step in range(steps):
        if step == min(10, steps - 1):
            warm = (time.time(), step)
        epoch, step_in_epoch = divmod(step, per_epoch)
        lr = learning_rate(step, steps, settings["lr"], settings["warmup_ratio"], settings["schedule"])
        set_learning_rate(optimizer, lr)
        index = micro_batch_indices(len(captured), settings.get("seed", 0), epoch, step_in_epoch, 0, 1, 1, 1, 0)[0]
        outputs = captured[index]
        loss_mask = outputs.padding if settings.get("loss_on") == "all" else outputs.loss_mask
        batch = TargetOutputs(outputs.input_ids, loss_mask, outputs.padding, outputs.draft_logits,
                              outputs.top_in_draft, outputs.hidden)
        if settings.get("feature_noise"):
            batch = with_feature_noise(batch, settings["feature_noise"], settings.get("seed", 0), step)
        optimizer.zero_grad(set_to_none=True)
        loss, _ = objective(batch, embed, None, step)
        loss.backward()
        if settings.get("grad_clip"):
            torch.nn.utils.clip_grad_norm_(draft.parameters(), settings["grad_clip"])
        optimizer.step()
        tokens += int(outputs.padding.sum())
        if (step + 1) % 100 == 0:
            log(f"  {variant.name} step {step + 1}/{steps} loss0 {float(loss):.3f} ({time.time() - wall:.0f} s)")
    per_step = (time.time() - warm[0]) / max(1, steps - warm[1])
    return draft.eval(), config, {"cpu_s": time.process_time() - started, "wall_s": time.time() - wall,
                                  "tokens": tokens, "epochs": steps / per_epoch, "step_s": per_step}


def simulated_tau(draft, config, eval_set, embed, k: int) -> dict:
    from eagle_recipes.draft.drafters import drafter
    from eagle_recipes.draft.reference import Acceptance, simulate_greedy_chain

    total = Acceptance(accepted_per_position=[0] * k)
    correctness = drafter(config.algorithm).correctness
    for outputs, prompt_len in eval_set:
        correct = correctness(draft, outputs, embed, k, None)[:, 0]
        total.add(simulate_greedy_chain(correct, prompt_len - 1, outputs.input_ids.shape[1]))
    return {"acceptance_length": round(total.acceptance_length, 4),
            "per_position": [round(p, 4) for p in total.per_position], "drafts": total.drafts}


def vllm_tau(draft, config, mapping, model_path, recipe, out: Path) -> dict:
    from eagle_recipes.evaluation.prompt_sets import mt_bench
    from eagle_recipes.evaluation.vllm_path import evaluate_vllm
    from eagle_recipes.draft.export import export_layout, speculative_config, write_draft

    folder = out / "draft"
    if folder.exists():
        import shutil

        shutil.rmtree(folder)
    k = recipe.eval.num_speculative_tokens
    write_draft(folder, draft.state_dict(), config, export_layout(config.algorithm, "flat"), "float32", model_path, k,
                mapping.d2t, mapping.t2d)
    prompt_sets = [mt_bench()]
    report, _ = evaluate_vllm(model_path, str(folder), speculative_config(config.algorithm), k, prompt_sets,
                              recipe.eval.max_tokens)
    return {name: {"acceptance_length": round(e.acceptance_length, 4),
                   "per_position": [round(p, 4) for p in e.per_position]} for name, e in report.items()}


def online_step_seconds(target, captured, recipe, facts, mapping, embed, aux_ids, draft_ids) -> float:
    """CPU-seconds of one online step (base forward + draft), averaged over 20 sequences, for the minutes column."""

    from eagle_recipes.draft.drafters import build_draft, build_draft_config
    from eagle_recipes.draft.ttt import ttt_loss
    from eagle_recipes.training.target_source import target_outputs

    config = build_draft_config(recipe.draft.algorithm, recipe.draft.overrides, facts, mapping.draft_vocab_size)
    draft = build_draft(config)
    started = time.process_time()
    for outputs in captured[:20]:
        fresh = target_outputs(target, outputs.input_ids, outputs.loss_mask, outputs.padding, aux_ids, draft_ids,
                               recipe.draft.algorithm)
        loss, _ = ttt_loss(draft, fresh, embed, recipe.train.ttt_steps, recipe.train.ttt_decay)
        loss.backward()
    return (time.process_time() - started) / 20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipe", default=str(PROJECT / "recipes" / "quickstart.toml"))
    parser.add_argument("--run", default="", help="the recipe's output folder (default: its output_dir)")
    parser.add_argument("--steps", default="240,480,960,1920")
    parser.add_argument("--variant", action="append", default=[], help="NAME:key=value,... (default: the recipe)")
    parser.add_argument("--engine", choices=["simulated", "vllm"], default="simulated")
    parser.add_argument("--out", default=str(PROJECT / "benchmarks" / "out" / "learning_curve"))
    parser.add_argument("--threads", type=int, default=2)
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
    variants = [parse_variant(v) for v in args.variant] or [Variant("recipe", {}, {})]  # bad ones fail now
    if args.quick:
        args.steps = "10"
    if args.report_only:
        report(Path(args.out))
        return

    import torch
    from transformers import AutoModelForCausalLM

    from eagle_recipes.draft.config import BaseModelFacts
    from eagle_recipes.draft.vocab import load_d2t
    from eagle_recipes.models import load_base_config
    from eagle_recipes.recipe import load_recipe
    from transformers import AutoTokenizer

    from eagle_recipes.data.chat import mask_token_id
    from eagle_recipes.data.sequences import Sequences
    from eagle_recipes.run_folder import CALIBRATE, SYNTHESIZE
    from eagle_recipes.recipe.training_data import tokenize_training_data
    from eagle_recipes.recipe.draft_config import draft_config_for
    from eagle_recipes.recipe.base_model import base_model_path

    torch.set_num_threads(args.threads)
    log = lambda message: print(message, flush=True)  # noqa: E731
    log(f"measured on {hardware()}")
    recipe = load_recipe(Path(args.recipe))
    run = Path(args.run) if args.run else recipe.output_dir
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    model_path = base_model_path(recipe)
    base_config = load_base_config(model_path)
    facts = BaseModelFacts.from_config(base_config)
    mapping = load_d2t(run / CALIBRATE / D2T_FILE, facts.vocab_size)
    MASK_TOKEN[0] = mask_token_id(AutoTokenizer.from_pretrained(model_path))
    aux_ids = draft_config_for(recipe, model_path, mapping.draft_vocab_size).aux_layer_ids
    draft_ids = mapping.target_ids
    target = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32).eval()
    embed = target.get_input_embeddings()
    draft_head = target.get_output_embeddings().weight.index_select(0, draft_ids).detach()
    algorithm = recipe.draft.algorithm

    features_file = out / "features.pt"
    if features_file.exists():
        cache = torch.load(features_file, weights_only=False)
    else:
        count = tokenize_training_data(recipe, {SYNTHESIZE: run / SYNTHESIZE}, model_path, out)
        data = Sequences.load(out)
        sequences = [(data.ids_of(i).tolist(), data.mask_of(i).tolist()) for i in range(data.count)]
        log(f"capturing the base model's features of {count} training sequences")
        train_set, capture_s = capture(target, sequences, aux_ids, draft_ids, algorithm, log)
        evals = {}
        mt_bench_rows = mt_bench_replies(model_path, 32 if args.quick else recipe.eval.max_tokens,
                                         out / "mt_bench.json", 8 if args.quick else 0)
        for name, rows in (("mt-bench", mt_bench_rows),
                           (HELD_OUT_SPLIT, holdout_replies(recipe, run, model_path))):
            captured, _ = capture(target, [(ids, [1] * len(ids)) for ids, _ in rows], aux_ids, draft_ids,
                                  algorithm, log)
            evals[name] = list(zip(captured, [prompt_len for _, prompt_len in rows]))
        cache = {"train": train_set, "evals": evals, "capture_cpu_s": capture_s}
        torch.save(cache, features_file)
    train_set, evals = cache["train"], cache["evals"]
    online_s = online_step_seconds(target, train_set, recipe, facts, mapping, embed, aux_ids, draft_ids)
    log(f"{len(train_set)} training sequences; eval: " + ", ".join(f"{n} {len(v)}" for n, v in evals.items())
        + f"; online step {online_s:.2f} CPU-s")
    results_file = out / "results.jsonl"
    rows = []
    for variant, steps, subset in planned_runs(args, variants, recipe, facts, mapping, train_set, draft_head, embed,
                                               log):
        draft, config, timing = train_draft(variant, steps, recipe, facts, mapping, subset, draft_head, embed,
                                            log)
        k = recipe.eval.num_speculative_tokens
        if args.engine == "vllm":
            tau = vllm_tau(draft, config, mapping, model_path, recipe, out)
        else:
            tau = {name: simulated_tau(draft, config, rows_, embed, k) for name, rows_ in evals.items()}
        row = {"variant": variant.name, "settings": {**variant.train, **{f"draft.{k_}": v for k_, v in
                                                                         variant.draft.items()}},
               "steps": steps, "epochs": round(timing["epochs"], 2), "tokens": timing["tokens"],
               "train_cpu_min": round(timing["cpu_s"] / 60, 2), "train_wall_min": round(timing["wall_s"] / 60, 2),
               "online_cpu_min": round(steps * online_s / 60, 2), "engine": args.engine, "tau": tau,
               "conversations": len(subset), "hardware": hardware()}
        rows.append(row)
        with open(results_file, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(row) + "\n")
        log(f"{variant.name} {steps} steps: " + ", ".join(
            f"{n} tau {t['acceptance_length']:.3f} {t['per_position']}" for n, t in tau.items())
            + f" ({timing['wall_s']:.0f} s)")
    report(out)


def planned_runs(args, variants, recipe, facts, mapping, train_set, draft_head, embed, log):
    """(variant, steps, training sequences) of every draft to train:
    - `--sizes`: the data axis, for each size a nested subset of the training sequences (prefixes of one seeded
      permutation), trained for `--epochs` epochs;
    - `--minutes`: each variant for as many steps as fit that many minutes (its step time timed first);
    - else every variant at every `--steps`."""
    import numpy as np

    if args.sizes:
        order = np.random.default_rng(0).permutation(len(train_set))
        for size in [int(s) for s in args.sizes.split(",")]:
            subset = [train_set[i] for i in order[:size]]
            for variant in variants:
                yield variant, max(1, round(args.epochs * len(subset))), subset
        return
    for variant in variants:
        if args.minutes:
            _, _, timing = train_draft(variant, 60, recipe, facts, mapping, train_set, draft_head, embed, log)
            steps = max(1, int(args.minutes * 60 / timing["step_s"]))
            log(f"{variant.name}: {timing['step_s']:.3f} s a step: {steps} steps in {args.minutes:g} minutes")
            yield variant, steps, train_set
        else:
            for steps in [int(s) for s in args.steps.split(",")]:
                yield variant, steps, train_set


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
