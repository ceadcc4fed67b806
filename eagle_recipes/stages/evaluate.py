"""Evaluate: acceptance length tau (tokens per verify step, bonus token included) and per-position acceptance,
greedy, with k draft tokens, on the recipe's prompt sets (MT-bench, the held-out split, prompt files).

The measuring itself lives in eagle_recipes/evaluation/ (`evaluate_draft`, which `eagle-recipes eval` calls too):
real vLLM (tau from its spec-decode counters, tokens/s with and without the draft, a losslessness check) or the
pure-PyTorch reference decoder. This stage runs it where an engine fits, then writes the complete model card and
reports to the run's trackers.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from eagle_recipes.draft.export import speculative_config
from eagle_recipes.data.formats import HELD_OUT_SPLIT
from eagle_recipes.recipe import Recipe
from eagle_recipes.run_folder import DRAFT_FOLDER, EVALUATE, EXPORT, RELATIVE, SYNTHESIZE, TRAIN, RunFolder
from eagle_recipes.stages.base import Stage, StageContext
from eagle_recipes.recipe.training_data import conversation_sources, read_conversations
from eagle_recipes.recipe.base_model import base_model_path, reasoning_setting, split_settings, thinking_when_generating


def speed_settings(recipe: Recipe):
    """The recipe's serving-speed sweep (None when off, or when the reference decoder measures)."""
    from eagle_recipes.evaluation.speed import SpeedSettings

    speed = recipe.eval.speed
    if not speed.concurrency or recipe.eval.engine != "vllm":
        return None
    return SpeedSettings(tuple(speed.concurrency), speed.prompts, speed.max_tokens, repeats=speed.repeats,
                         draft_tokens=tuple(speed.draft_tokens))


def report_to_trackers(recipe: Recipe, report: dict) -> None:
    """tau and per-position acceptance into the training run's trackers, at its last step."""
    if not recipe.train.report_to:
        return
    from eagle_recipes.trackers import eval_scalars

    train = RunFolder(recipe.output_dir).manifests((TRAIN,)).get(TRAIN)
    with recipe.tracking().open() as trackers:
        trackers.log(train["counts"]["steps"] if train else 0, eval_scalars(report), final=True)


class EvaluateStage(Stage):
    name = EVALUATE
    description = "acceptance length on MT-bench and the held-out split (real vLLM)"
    headline_metric = "acceptance_length"
    reads_from = (EXPORT, SYNTHESIZE)

    @staticmethod
    def enabled(recipe: Recipe) -> tuple[bool, str]:
        return (True, "") if recipe.eval.enabled else (False, "eval.enabled = false")


    @staticmethod
    def settings(recipe: Recipe) -> dict[str, Any]:
        # the template switch evaluation prompts are rendered with
        return {"eval": recipe.data["eval"], **split_settings(recipe), **reasoning_setting(recipe)}

    @staticmethod
    def input_files(recipe: Recipe) -> list[Path]:
        return [recipe.resolve(p) for p in recipe.eval_prompt_files]

    @staticmethod
    def outputs(recipe: Recipe) -> list[str]:
        return [str(RELATIVE.report), str(RELATIVE.report_plot), f"{RELATIVE.card}/README.md"]

    @staticmethod
    def ray_options(recipe: Recipe) -> dict[str, Any]:
        return {"num_cpus": 0.1}

    @staticmethod
    def describe_resources(recipe: Recipe) -> list[str]:
        return ["engine: vLLM, 1 GPU (or 1 CPU)" if recipe.eval.engine == "vllm" else "engine: PyTorch"]

    @classmethod
    def headline(cls, manifest: dict[str, Any]) -> str:
        metrics = manifest.get("metrics", {})
        best = metrics.get("fastest")
        speed = f", best {best['speedup']:.2f}x (k={best['k']}, load {best['concurrency']})" if best else ""
        return f"tau={metrics.get('acceptance_length', 0):.3g}{speed}"

    @staticmethod
    def outcome(recipe: Recipe, manifest: dict) -> list[str]:
        metrics = manifest["metrics"]
        lines = [f"acceptance length tau = {metrics['acceptance_length']:.3f} at k = "
                 f"{metrics['num_speculative_tokens']} draft tokens (per position: "
                 f"{', '.join(f'{p:.2f}' for p in metrics['per_position'])}; prompt set {metrics['headline_set']})"]
        if metrics.get("speed_headline"):
            lines.append(metrics["speed_headline"])
        return lines

    @staticmethod
    def run(ctx: StageContext) -> dict[str, Any]:
        import ray

        from eagle_recipes.card import write_complete_card
        from eagle_recipes.engines.placement import cluster_has_gpus, engine_placement
        from eagle_recipes.evaluation import evaluate_draft
        from eagle_recipes.evaluation.prompt_sets import resolve_sets

        recipe = ctx.recipe
        held_out = read_conversations(conversation_sources(recipe, ctx.upstream), recipe, split=HELD_OUT_SPLIT)
        sets = resolve_sets(recipe.eval.prompts, recipe.resolve, held_out, recipe.eval.max_prompts,
                            recipe.eval.turns)
        if HELD_OUT_SPLIT in recipe.eval.prompts and not any(s.name == HELD_OUT_SPLIT for s in sets):
            ctx.log("the held-out split is empty (data.holdout_fraction leaves no conversation out): not measured")
        if not sets:
            raise ValueError("eval.prompts: no prompt set has prompts; add \"mt-bench\" or a prompt file")
        ctx.log(f"evaluating on {', '.join(f'{s.name} ({len(s.prompts)} prompts)' for s in sets)}")
        k = recipe.eval.num_speculative_tokens
        task = ray.remote(evaluate_draft).options(**engine_placement(1, cluster_has_gpus()))
        report = ray.get(task.remote(base_model_path(recipe), ctx.upstream[EXPORT] / DRAFT_FOLDER,
                                     speculative_config(recipe.draft.algorithm), k, sets, recipe.eval.max_tokens,
                                     recipe.eval.engine, ctx.out, recipe.data["eval"], dtype=recipe.model.dtype,
                                     progress=ctx.progress, thinking=thinking_when_generating(recipe),
                                     speed=speed_settings(recipe)))
        write_complete_card(recipe, ctx.run.root, report.to_dict(), ctx.run.report_plot)
        report_to_trackers(recipe, report.to_dict())
        for name, entry in report.sets.items():
            ctx.log(entry.summary(name))
        speed = {}
        if report.speed:
            for load in report.speed.loads:
                ctx.log(report.speed.advice(load))
            fastest = max((report.speed.recommended(load) for load in report.speed.loads), key=lambda r: r.speedup)
            speed = {"fastest": {"k": fastest.k, "concurrency": fastest.concurrency, "speedup": fastest.speedup},
                     "speed_headline": report.speed.headline()}
        headline = report.headline
        return {"counts": {name: entry.prompts for name, entry in report.sets.items()},
                "metrics": {"acceptance_length": headline.acceptance_length, "per_position": headline.per_position,
                            "num_speculative_tokens": k, "headline_set": report.headline_set,
                            "lossless": report.lossless, **speed}}
