"""Export: write the trained draft in the layout its engines load, then check it tensor by tensor (draft/export.py
writes, draft/inspect.py checks: the same check as `eagle-recipes inspect DRAFT_DIR`)."""

from __future__ import annotations

from typing import Any

from eagle_recipes.draft.engine_rules import EXPORTED_NUMBERING
from eagle_recipes.draft.export import export_layout, serving_snippet, write_draft
from eagle_recipes.draft.layouts import with_long_context
from eagle_recipes.draft.trained import read_trained
from eagle_recipes.recipe import Recipe
from eagle_recipes.recipe.serving_check import serving_engines
from eagle_recipes.run_folder import EXPORT, RELATIVE, TRAIN, RunFolder
from eagle_recipes.stages.base import Stage, StageContext
from eagle_recipes.recipe.base_model import base_model_path


class ExportStage(Stage):
    name = EXPORT
    description = "write the draft for its serving engines and check every tensor"
    reads_from = (TRAIN,)


    @staticmethod
    def settings(recipe: Recipe) -> dict[str, Any]:
        return {"export": recipe.data["export"], "k": recipe.eval.num_speculative_tokens,
                "layer_ids": EXPORTED_NUMBERING}

    @staticmethod
    def outputs(recipe: Recipe) -> list[str]:
        draft = RELATIVE.draft
        return [f"{draft}/config.json", f"{draft}/model.safetensors", f"{draft}/README.md (the card)"]

    @staticmethod
    def ray_options(recipe: Recipe) -> dict[str, Any]:
        return {"num_cpus": 1}

    @staticmethod
    def outcome(recipe: Recipe, manifest: dict[str, Any]) -> list[str]:
        return [f"draft: {RunFolder(recipe.output_dir).draft}"]

    @staticmethod
    def run(ctx: StageContext) -> dict[str, Any]:
        from eagle_recipes.card import render_card

        trained = read_trained(ctx.run.trained)
        config = with_long_context(trained.config, ctx.recipe.export.rope_scaling)
        layout = export_layout(config.algorithm, ctx.recipe.export.layout)
        base = base_model_path(ctx.recipe)
        k = ctx.recipe.eval.num_speculative_tokens
        draft = ctx.run.draft
        report = write_draft(draft, trained.state, config, layout, ctx.recipe.export.dtype, base, k,
                             trained.mapping.d2t, trained.mapping.t2d,
                             readme=render_card(ctx.recipe, ctx.out.parent))  # the card as export knows it
        for line in report.lines():
            ctx.log(line)
        if not report.ok:
            raise RuntimeError("the exported draft failed its completeness check:\n" + "\n".join(report.lines()))
        engines = serving_engines(ctx.recipe, trained.config)
        ctx.log("serve it with:\n" + serving_snippet(base, draft, config.algorithm, k, engines))
        return {"counts": {"tensors": report.tensors}, "metrics": {"layout": layout, "inspect_ok": report.ok}}
