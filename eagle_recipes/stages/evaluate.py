"""Evaluate: acceptance length tau (tokens per verify step, bonus token included) and per-position acceptance,
greedy, with k draft tokens, on the recipe's prompt sets (MT-bench, the held-out split, prompt files).

The measuring itself lives in eagle_recipes/evaluation/: real vLLM (tau from its spec-decode counters, tokens/s
with and without the draft, a losslessness check) or the pure-PyTorch reference decoder.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from eagle_recipes.draft.layouts import speculative_method
from eagle_recipes.evaluation.report import EvalReport
from eagle_recipes.recipe import Recipe
from eagle_recipes.stages.base import Stage, StageContext
from eagle_recipes.stages.common import (
    base_model_path,
    conversation_files,
    read_conversations,
    reasoning_setting,
    thinking_when_generating,
)


def write_card(recipe: Recipe, out: Path, report: dict) -> None:
    """evaluate/card/: the complete model card (with tau) and its chart, what `publish` puts beside the weights."""
    import shutil

    from eagle_recipes.atomic import atomic_path
    from eagle_recipes.card import CARD_FOLDER, render_card

    with atomic_path(out / CARD_FOLDER) as tmp:
        tmp.mkdir()
        (tmp / "README.md").write_text(render_card(recipe, out.parent, report), encoding="utf-8")
        if (out / "per_position.png").exists():
            shutil.copy(out / "per_position.png", tmp / "per_position.png")


def report_to_trackers(recipe: Recipe, report: dict) -> None:
    """tau and per-position acceptance into the training run's trackers, at its last step."""
    if not recipe.train.report_to:
        return
    from eagle_recipes.graph.manifest import read_manifest
    from eagle_recipes.stages.train import tracking_spec
    from eagle_recipes.trackers import Trackers, eval_scalars

    spec = tracking_spec(recipe)
    train = read_manifest(recipe.output_dir / "train")
    with Trackers(spec["names"], Path(spec["folder"]), spec["run_name"], spec["config"]) as trackers:
        trackers.log(train.counts["steps"] if train else 0, eval_scalars(report), final=True)


def _measure_task(base: str, draft: Path, method: str, k: int, sets: list, max_tokens: int, engine: str,
                  dtype: str, progress, thinking: bool | None) -> dict:
    from eagle_recipes.evaluation import measure

    return measure(base, draft, method, k, sets, max_tokens, engine, dtype, log=lambda message: None,
                   progress=progress, thinking=thinking)


class EvaluateStage(Stage):
    name = "evaluate"
    description = "acceptance length on MT-bench and the held-out split (real vLLM)"
    headline_metric = "acceptance_length"

    @staticmethod
    def enabled(recipe: Recipe) -> tuple[bool, str]:
        return (True, "") if recipe.eval.enabled else (False, "eval.enabled = false")

    @staticmethod
    def depends_on(recipe: Recipe, enabled: set[str]) -> list[str]:
        return ["export"] + (["synthesize"] if "synthesize" in enabled else [])

    @staticmethod
    def settings(recipe: Recipe) -> dict[str, Any]:
        return {"eval": recipe.data["eval"], "holdout_fraction": recipe.dataset.holdout_fraction,
                **reasoning_setting(recipe)}  # the template switch evaluation prompts are rendered with

    @staticmethod
    def input_files(recipe: Recipe) -> list[Path]:
        return [recipe.resolve(p) for p in recipe.eval_prompt_files]

    @staticmethod
    def outputs(recipe: Recipe) -> list[str]:
        return ["evaluate/report.json", "evaluate/per_position.png", "evaluate/card/README.md"]

    @staticmethod
    def ray_options(recipe: Recipe) -> dict[str, Any]:
        return {"num_cpus": 0.1}

    @staticmethod
    def describe_resources(recipe: Recipe) -> list[str]:
        return ["engine: vLLM, 1 GPU (or 1 CPU)" if recipe.eval.engine == "vllm" else "engine: PyTorch"]

    @staticmethod
    def outcome(recipe: Recipe, manifest: dict) -> list[str]:
        metrics = manifest["metrics"]
        return [f"acceptance length tau = {metrics['acceptance_length']:.3f} at k = "
                f"{metrics['num_speculative_tokens']} draft tokens (per position: "
                f"{', '.join(f'{p:.2f}' for p in metrics['per_position'])}; prompt set {metrics['headline_set']})"]

    @staticmethod
    def run(ctx: StageContext) -> dict[str, Any]:
        import ray

        from eagle_recipes.engines import cluster_has_gpus, cpu_engine_env
        from eagle_recipes.evaluation.prompt_sets import resolve_sets

        recipe = ctx.recipe
        held_out = read_conversations(conversation_files(recipe, ctx.upstream), recipe, split="holdout")
        sets = resolve_sets(recipe.eval.prompts, recipe.resolve, held_out, recipe.eval.max_prompts,
                            recipe.eval.turns)
        if "holdout" in recipe.eval.prompts and not any(s.name == "holdout" for s in sets):
            ctx.log("the held-out split is empty (data.holdout_fraction leaves no conversation out): not measured")
        if not sets:
            raise ValueError("eval.prompts: no prompt set has prompts; add \"mt-bench\" or a prompt file")
        ctx.log(f"evaluating on {', '.join(f'{s.name} ({len(s.prompts)} prompts)' for s in sets)}")
        options = {"num_gpus": 1} if cluster_has_gpus() else {"num_cpus": 1,
                                                              "runtime_env": {"env_vars": cpu_engine_env()}}
        k = recipe.eval.num_speculative_tokens
        task = ray.remote(_measure_task).options(**options)
        measured = ray.get(task.remote(base_model_path(recipe), ctx.upstream["export"] / "draft",
                                       speculative_method(recipe.draft.algorithm), k, sets, recipe.eval.max_tokens,
                                       recipe.eval.engine, recipe.model.dtype, ctx.progress,
                                       thinking_when_generating(recipe)))
        report = EvalReport(measured, recipe.data["eval"])
        report.write(ctx.out)
        write_card(recipe, ctx.out, report.to_dict())
        report_to_trackers(recipe, report.to_dict())
        for name, entry in report.sets.items():
            ctx.log(entry.summary(name))
        headline = report.headline
        return {"counts": {name: entry.prompts for name, entry in report.sets.items()},
                "metrics": {"acceptance_length": headline.acceptance_length, "per_position": headline.per_position,
                            "num_speculative_tokens": k, "headline_set": report.headline_set,
                            "lossless": report.lossless, "speedup": headline.speedup}}
