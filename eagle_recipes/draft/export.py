"""A draft as serving engines take it: the method names vLLM and SGLang give each algorithm, the layout an export
writes for it, writing that folder (checked by draft/inspect.py), and the commands that serve it."""

from __future__ import annotations

import json
from pathlib import Path

from eagle_recipes.draft.config import DraftConfig
from eagle_recipes.draft.drafters import drafter
from eagle_recipes.draft.inspect import InspectReport, inspect_draft
from eagle_recipes.draft.engine_rules import engines_that_serve
from eagle_recipes.draft.layouts import config_facts, layout_config, to_layout


def speculative_config(algorithm: str) -> dict:
    """vLLM's `speculative_config` for a draft algorithm, but for the draft's path and k: its `method` and any
    option that method needs for this drafter (P-EAGLE: `parallel_drafting`)."""
    spec = drafter(algorithm)
    return {"method": spec.vllm_method, **spec.vllm_options}


def sglang_algorithm(algorithm: str) -> str | None:
    """SGLang's `--speculative-algorithm` for a draft algorithm (None: this project serves it with vLLM only)."""
    return drafter(algorithm).sglang_algorithm


def export_layout(algorithm: str, requested: str) -> str:
    """The layout an export writes: the drafter's own when it has one (EAGLE-1, DFlash), else the recipe's
    `export.layout` (EAGLE-3: flat or speculators)."""
    return drafter(algorithm).layout or requested


def serving_snippet(base: str, draft: Path | str, algorithm: str, k: int, engines: list[str]) -> str:
    """The commands that serve `draft` beside `base` with k draft tokens, for each of `engines` ("vllm", "sglang":
    those that load the folder and feed it the layers it was trained on, draft/engine_rules.py)."""
    parts = []
    if "vllm" in engines:
        spec = json.dumps({**speculative_config(algorithm), "model": str(draft), "num_speculative_tokens": k})
        parts.append(f"# Serve with vLLM\nvllm serve {base} --speculative-config '{spec}'\n")
    sglang = sglang_algorithm(algorithm)
    if "sglang" in engines and sglang is not None:
        parts.append(f"# Serve with SGLang\npython -m sglang.launch_server --model-path {base} \\\n"
                     f"  --speculative-algorithm {sglang} --speculative-draft-model-path {draft} \\\n"
                     f"  --speculative-num-steps {k} --speculative-eagle-topk 1 --speculative-num-draft-tokens {k + 1}\n")
    if not parts:
        return "# No engine named here serves this draft as trained: see `eagle-recipes inspect` on the folder\n"
    return "\n".join(parts)


def write_draft(folder: Path, state: dict, config: DraftConfig, layout: str, dtype: str, base_model: str, k: int,
                d2t=None, t2d=None, readme: str | None = None) -> InspectReport:
    """Write config.json + model.safetensors + README.md (`readme`, else the serving commands) atomically, then
    check the result."""
    import torch
    from safetensors.torch import save_file

    from eagle_recipes.atomic import atomic_path, write_json, write_text

    torch_dtype = getattr(torch, dtype)
    tensors = {name: tensor.detach().to(torch_dtype).contiguous()
               for name, tensor in to_layout(state, layout).items()}
    if drafter(config.algorithm).calibrated_vocab and config.draft_vocab_size != config.vocab_size:
        tensors["d2t"] = d2t.to(torch.int64).contiguous()
        tensors["t2d"] = t2d.to(torch.bool).contiguous()
    config_json = layout_config(config, layout, dtype, base_model, k)
    if readme is None:  # the serving commands of the engines that serve this folder as trained
        engines = engines_that_serve(config_json, config_facts(config_json))
        readme = serving_snippet(base_model, folder.resolve(), config.algorithm, k, engines)
    with atomic_path(folder) as tmp:
        tmp.mkdir()
        save_file(tensors, tmp / "model.safetensors", metadata={"format": "pt"})
        write_json(tmp / "config.json", config_json)
        write_text(tmp / "README.md", readme)
    return inspect_draft(folder)


def served_copy(folder: Path, destination: Path, log=print) -> Path:
    """A copy of a draft folder whose config.json also names its trained layers where both vLLM runners read them
    first (the top level, vLLM's numbering): for folders that nest them in SGLang's numbering alone (SpecForge,
    ModelOpt), which vLLM's V1 runner would read one layer shallower. The weights are linked (copied where links
    are refused); the user's folder is never edited."""
    import os
    import shutil

    from eagle_recipes.atomic import atomic_path, write_json
    from eagle_recipes.draft.engine_rules import export_fields, trained_layers
    from eagle_recipes.draft.layouts import read_config

    config = read_config(folder)
    layers, _ = trained_layers(config)
    if layers is None:
        raise ValueError(f"{folder}: its config.json names no layers to serve")
    with atomic_path(destination) as tmp:
        tmp.mkdir(parents=True)
        for path in sorted(folder.iterdir()):
            if path.is_file() and path.name != "config.json":
                try:
                    os.symlink(path.resolve(), tmp / path.name)
                except OSError:
                    shutil.copy2(path, tmp / path.name)
        write_json(tmp / "config.json", {**config, **export_fields(layers)[0]})
    log(f"serving a copy, {destination}, whose config.json names the trained layers {list(layers)} at the top "
        f"level (vLLM's numbering); {folder} is unchanged")
    return destination
