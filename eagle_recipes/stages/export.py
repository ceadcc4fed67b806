"""Export: write the trained draft in a layout vLLM and SGLang load (draft/layouts.py), then check it tensor by
tensor (draft/inspect.py, the same check as `eagle-recipes inspect DRAFT_DIR`)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from eagle_recipes.atomic import atomic_path, write_json, write_text
from eagle_recipes.draft.config import DraftConfig
from eagle_recipes.draft.inspect import InspectReport, inspect_draft
from eagle_recipes.draft.layouts import (
    layout_config,
    sglang_algorithm,
    speculative_method,
    to_layout,
    with_long_context,
)
from eagle_recipes.recipe import Recipe
from eagle_recipes.stages.base import Stage, StageContext
from eagle_recipes.stages.common import base_model_path


def serving_snippet(base: str, draft: Path, algorithm: str, k: int) -> str:
    sglang = sglang_algorithm(algorithm)
    spec = json.dumps({"method": speculative_method(algorithm), "model": str(draft), "num_speculative_tokens": k})
    return (f"# Serve with vLLM\nvllm serve {base} --speculative-config '{spec}'\n\n"
            f"# Serve with SGLang\npython -m sglang.launch_server --model-path {base} \\\n"
            f"  --speculative-algorithm {sglang} --speculative-draft-model-path {draft} \\\n"
            f"  --speculative-num-steps {k} --speculative-eagle-topk 1 --speculative-num-draft-tokens {k + 1}\n")


def write_draft(folder: Path, state: dict, config: DraftConfig, layout: str, dtype: str, base_model: str, k: int,
                d2t=None, t2d=None, readme: str | None = None) -> InspectReport:
    """Write config.json + model.safetensors + README.md (`readme`, else the serving commands) atomically, then
    check the result."""
    import torch
    from safetensors.torch import save_file

    torch_dtype = getattr(torch, dtype)
    tensors = {name: tensor.detach().to(torch_dtype).contiguous()
               for name, tensor in to_layout(state, layout).items()}
    if layout != "eagle1" and config.draft_vocab_size != config.vocab_size:
        tensors["d2t"] = d2t.to(torch.int64).contiguous()
        tensors["t2d"] = t2d.to(torch.bool).contiguous()
    with atomic_path(folder) as tmp:
        tmp.mkdir()
        save_file(tensors, tmp / "model.safetensors", metadata={"format": "pt"})
        write_json(tmp / "config.json", layout_config(config, layout, dtype, base_model, k))
        write_text(tmp / "README.md", readme or serving_snippet(base_model, folder.resolve(), config.algorithm, k))
    return inspect_draft(folder)


class ExportStage(Stage):
    name = "export"
    description = "write the draft for vLLM/SGLang and check every tensor"

    @staticmethod
    def depends_on(recipe: Recipe, enabled: set[str]) -> list[str]:
        return ["train"]

    @staticmethod
    def settings(recipe: Recipe) -> dict[str, Any]:
        return {"export": recipe.data["export"], "k": recipe.eval.num_speculative_tokens}

    @staticmethod
    def outputs(recipe: Recipe) -> list[str]:
        return ["export/draft/config.json", "export/draft/model.safetensors", "export/draft/README.md (the card)"]

    @staticmethod
    def ray_options(recipe: Recipe) -> dict[str, Any]:
        return {"num_cpus": 1}

    @staticmethod
    def outcome(recipe: Recipe, manifest: dict[str, Any]) -> list[str]:
        return [f"draft: {recipe.output_dir / 'export' / 'draft'}"]

    @staticmethod
    def run(ctx: StageContext) -> dict[str, Any]:
        import torch
        from safetensors.torch import load_file

        from eagle_recipes.card import render_card

        final = ctx.upstream["train"] / "final"
        trained = DraftConfig.from_dict(json.loads((final / "draft_config.json").read_text(encoding="utf-8")))
        config = with_long_context(trained, ctx.recipe.export.rope_scaling)
        state = load_file(str(final / "model.safetensors"))
        layout = "eagle1" if config.algorithm == "eagle1" else ctx.recipe.export.layout
        base = base_model_path(ctx.recipe)
        k = ctx.recipe.eval.num_speculative_tokens
        report = write_draft(ctx.out / "draft", state, config, layout, ctx.recipe.export.dtype, base, k,
                             torch.load(final / "d2t.pt", weights_only=True),
                             torch.load(final / "t2d.pt", weights_only=True),
                             readme=render_card(ctx.recipe, ctx.out.parent))  # the card as export knows it
        for line in report.lines():
            ctx.log(line)
        if not report.ok:
            raise RuntimeError("the exported draft failed its completeness check:\n" + "\n".join(report.lines()))
        ctx.log("serve it with:\n" + serving_snippet(base, ctx.out / "draft", config.algorithm, k))
        return {"counts": {"tensors": report.tensors}, "metrics": {"layout": layout, "inspect_ok": report.ok}}
