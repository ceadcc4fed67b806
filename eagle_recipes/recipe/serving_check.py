"""Before any work starts: can the engines a recipe names serve its draft on its base model, with the layers it
will be trained on? vLLM is asked through its own model registry (engines/serving_targets.py); the draft folder the
export would write is read with each engine's rule (draft/engine_rules.py)."""

from __future__ import annotations

from eagle_recipes.draft.config import DraftConfig
from eagle_recipes.draft.drafters import drafter
from eagle_recipes.draft.engine_rules import sglang_cannot_load
from eagle_recipes.draft.export import export_layout
from eagle_recipes.draft.layouts import config_facts, layout_config
from eagle_recipes.engines.serving_targets import sglang_serves_target, vllm_refusal, vllm_target
from eagle_recipes.recipe.errors import Problem
from eagle_recipes.recipe.toml_lines import line_of
from eagle_recipes.recipe.view import Recipe


def vllm_serves(recipe: Recipe) -> bool:
    """Whether the recipe needs vLLM to serve its draft: named in export.engines, or the evaluate stage's engine."""
    evaluates_in_vllm = recipe.eval.enabled and recipe.eval.engine == "vllm"
    return "vllm" in recipe.export.engines or evaluates_in_vllm


def _export_config(recipe: Recipe, draft: DraftConfig) -> dict:
    """The config.json the export stage would write for this draft."""
    layout = export_layout(draft.algorithm, recipe.export.layout)
    return layout_config(draft, layout, recipe.export.dtype, "base", recipe.eval.num_speculative_tokens)


def _architecture(base_config: dict) -> str:
    return (base_config.get("architectures") or ["?"])[0]


def _vllm_problem(recipe: Recipe, base_config: dict, draft: DraftConfig, lines: dict[str, int]) -> \
        tuple[list[Problem], list[str]]:
    spec = drafter(draft.algorithm)
    architecture = _architecture(base_config)
    target = vllm_target(architecture)
    if not target.checked:
        return [], [f"vLLM is not installed here: could not check that vLLM serves {architecture} with a "
                    f"{spec.title} draft (validate on a machine with the engine, or see the catalog entry)"]
    refusal = vllm_refusal(target, spec.reads_aux_states, spec.title)
    if not refusal:
        return [], []
    key = "export.engines" if "vllm" in recipe.export.engines else "eval.engine"
    if sglang_serves_target(architecture) and spec.sglang_algorithm:
        llama_layer = ", draft.overrides.qk_norm = false" if draft.qk_norm else ""
        hint = (f'SGLang serves {architecture} with a Llama-layer {spec.title} draft: set export.engines = '
                f'["sglang"]{llama_layer} and eval.engine = "reference" (the PyTorch reference decoder measures tau)')
    else:
        hint = "choose a base model vLLM serves with this drafter, or another drafter"
    return [Problem(str(recipe.path), line_of(lines, key) or line_of(lines, key.split(".")[0]), key, refusal, hint)], []


def _sglang_problem(recipe: Recipe, base_config: dict, draft: DraftConfig, lines: dict[str, int]) -> list[Problem]:
    architecture = _architecture(base_config)
    line = line_of(lines, "export.engines")
    if not sglang_serves_target(architecture):
        return [Problem(str(recipe.path), line, "export.engines",
                        f"SGLang feeds no EAGLE draft the hidden states of {architecture} (its class has no "
                        "set_eagle3_layers_to_capture)", 'remove "sglang" from export.engines')]
    config = _export_config(recipe, draft)
    why = sglang_cannot_load(config, config_facts(config))
    if why:
        return [Problem(str(recipe.path), line, "export.engines", f"SGLang would not serve this draft: {why}",
                        'change that setting, or remove "sglang" from export.engines')]
    return []


def serving_problems(recipe: Recipe, base_config: dict, draft: DraftConfig, lines: dict[str, int]) -> \
        tuple[list[Problem], list[str]]:
    """(problems, notes): every engine the recipe needs must serve its draft on its base as trained."""
    problems, notes = [], []
    if vllm_serves(recipe):
        problems, notes = _vllm_problem(recipe, base_config, draft, lines)
    if "sglang" in recipe.export.engines:
        problems += _sglang_problem(recipe, base_config, draft, lines)
    return problems, notes


def serving_engines(recipe: Recipe, draft: DraftConfig) -> list[str]:
    """The engines ("vllm", "sglang") that serve this recipe's draft on its base model as trained: they load the
    folder the export writes and feed it the trained layers (draft/engine_rules.py), and serve the base's
    architecture as a target (vLLM's registry, SGLang's classes). What the card and the serving commands offer."""
    from eagle_recipes.draft.engine_rules import engines_that_serve
    from eagle_recipes.models import ModelError, load_base_config

    config = _export_config(recipe, draft)
    engines = engines_that_serve(config, config_facts(config))
    try:
        architecture = _architecture(load_base_config(recipe.model.path, recipe.model.config, recipe.folder))
    except (ModelError, OSError, ValueError):
        return engines  # the base cannot be read here: the folder's own rules alone
    spec = drafter(draft.algorithm)
    if vllm_refusal(vllm_target(architecture), spec.reads_aux_states, spec.title):
        engines = [e for e in engines if e != "vllm"]
    if not sglang_serves_target(architecture):
        engines = [e for e in engines if e != "sglang"]
    return engines
