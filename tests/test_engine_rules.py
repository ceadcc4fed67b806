"""Each engine's reading of an exported draft (draft/engine_rules.py): for every drafter and every layout the export
writes, vLLM's V1 runner, vLLM's V2 runner and SGLang each feed the draft the layers it was trained on, or do not
load it and say why. vLLM's rules are also checked against vLLM's own functions (the installed 0.32); SGLang's
cannot be (its wheel needs CUDA packages): its rule cites its source."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch

from eagle_recipes.draft.config import BaseModelFacts
from eagle_recipes.draft.drafters import DRAFTERS, build_draft, build_draft_config
from eagle_recipes.draft.engine_rules import (
    SGLANG,
    VLLM_V1,
    VLLM_V2,
    engines_that_serve,
    misread,
    readings,
    trained_layers,
    vllm_v1_layers,
    vllm_v2_layers,
)
from eagle_recipes.draft.export import write_draft
from eagle_recipes.draft.inspect import inspect_draft
from eagle_recipes.draft.layouts import config_facts, layout_of
from eagle_recipes.draft.vocab import mapping_from_ids
from tests.helpers import PROJECT

SMOL = json.loads((PROJECT / "catalog/smollm2/configs/SmolLM2-135M-Instruct.json").read_text())
SMALL = {**SMOL, "hidden_size": 64, "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 16,
         "intermediate_size": 128, "vocab_size": 500, "num_hidden_layers": 30}
NON_DEFAULT = (1, 10, 20)  # SmolLM2's default is (2, 15, 27): no engine's default can stand in for these

# every (drafter, layout) the export writes, and the overrides that make a draft SGLang could load where any can
EXPORTS = [("eagle3", "flat", {}), ("eagle3", "flat", {"qk_norm": True}), ("eagle3", "speculators", {}),
           ("eagle1", "eagle1", {}), ("dflash", "dflash", {"mask_token_id": 3}),
           ("peagle", "peagle", {"mask_token_id": 3})]


def _export(folder, algorithm: str, layout: str, overrides: dict) -> dict:
    aux = {"aux_layer_ids": list(NON_DEFAULT)} if DRAFTERS[algorithm].reads_aux_states else {}
    config = build_draft_config(algorithm, {**aux, **overrides}, BaseModelFacts.from_config(SMALL), 100)
    torch.manual_seed(0)
    mapping = mapping_from_ids(torch.arange(100) * 3, 500)
    report = write_draft(folder, build_draft(config).state_dict(), config, layout, "float32", "base", 3,
                         mapping.d2t, mapping.t2d)
    assert report.ok, report.lines()
    return json.loads((folder / "config.json").read_text())


def test_every_drafter_and_layout_of_the_export_is_exercised():
    assert {algorithm for algorithm, _, _ in EXPORTS} == set(DRAFTERS)


@pytest.mark.parametrize("algorithm,layout,overrides", EXPORTS, ids=lambda v: str(v))
def test_every_engine_feeds_an_export_the_layers_it_was_trained_on(tmp_path, algorithm, layout, overrides):
    config = _export(tmp_path / "draft", algorithm, layout, overrides)
    assert layout_of(config) == layout
    facts = config_facts(config)
    trained = NON_DEFAULT if DRAFTERS[algorithm].reads_aux_states else None
    assert trained_layers(config)[0] == trained
    by_engine = {r.engine: r for r in readings(config, facts)}
    for engine in (VLLM_V1, VLLM_V2):
        assert not by_engine[engine].cannot_load
        assert by_engine[engine].layers == trained, (engine, by_engine[engine])
    sglang = by_engine[SGLANG]
    assert sglang.cannot_load or sglang.layers == trained, sglang
    # SGLang loads the plain flat EAGLE-3 layer alone: a Qwen3-style layer, speculators, P-EAGLE, EAGLE-1 as
    # vLLM takes it, and DFlash with its own head are not served there, and the folder says so
    assert bool(sglang.cannot_load) == (layout != "flat" or bool(overrides.get("qk_norm"))), sglang
    assert engines_that_serve(config, facts) == (["vllm"] if sglang.cannot_load else ["vllm", "sglang"])
    assert not [misread(r, trained) for r in by_engine.values() if misread(r, trained)]


def _vllm_v1(config: dict):
    """vLLM's own V1 reading of a draft config.json (the CPU build's runner)."""
    from transformers import PretrainedConfig
    from vllm.v1.worker.gpu_model_runner import GPUModelRunner

    runner = SimpleNamespace(speculative_config=SimpleNamespace(
        draft_model_config=SimpleNamespace(hf_config=PretrainedConfig(**config))))
    return GPUModelRunner._get_eagle3_aux_layers_from_config(runner)


def _vllm_v2(config: dict):
    """vLLM's own V2 reading (its GPU default for EAGLE-3)."""
    from transformers import PretrainedConfig
    from vllm.v1.worker.gpu.spec_decode.eagle.eagle3_utils import get_eagle3_aux_layers_from_config

    spec = SimpleNamespace(draft_model_config=SimpleNamespace(hf_config=PretrainedConfig(**config)))
    return get_eagle3_aux_layers_from_config(spec)


def _old_flat_export(config: dict) -> dict:
    """The flat export as it was written before each engine's rule had an owner: vLLM's numbering, nested only."""
    old = {k: v for k, v in config.items() if k != "eagle_aux_hidden_state_layer_ids"}
    old["eagle_config"] = {**config["eagle_config"], "eagle_aux_hidden_state_layer_ids": list(NON_DEFAULT)}
    return old


@pytest.mark.parametrize("algorithm,layout,overrides", EXPORTS, ids=lambda v: str(v))
def test_vllms_own_functions_read_what_our_rules_say(tmp_path, algorithm, layout, overrides):
    config = _export(tmp_path / "draft", algorithm, layout, overrides)
    peer = {k: v for k, v in config.items() if k != "eagle_aux_hidden_state_layer_ids"}  # nested ids alone
    for written in (config, peer, _old_flat_export(config) if layout == "flat" else config):
        assert _vllm_v1(written) == vllm_v1_layers(written)[0], written
        assert _vllm_v2(written) == vllm_v2_layers(written)[0], written


def test_the_flat_export_as_it_was_is_misread_by_v2_and_sglang(tmp_path):
    """Today's check fails on yesterday's export: vLLM's V2 runner ignores nested ids (its default instead), SGLang
    reads every layer one deeper."""
    config = _old_flat_export(_export(tmp_path / "draft", "eagle3", "flat", {}))
    facts = config_facts(config)
    trained = NON_DEFAULT  # what the draft was trained on (the recipe's ids, vLLM's numbering)
    by_engine = {r.engine: r for r in readings(config, facts)}
    assert by_engine[VLLM_V1].layers == trained
    assert by_engine[VLLM_V2].layers is None and "default" in misread(by_engine[VLLM_V2], trained)
    assert by_engine[SGLANG].layers == tuple(i + 1 for i in trained)
    assert misread(by_engine[SGLANG], trained)


def test_inspect_prints_each_engines_layers_and_calls_a_misread_folder_broken(tmp_path):
    config = _export(tmp_path / "draft", "eagle3", "flat", {})
    report = inspect_draft(tmp_path / "draft")
    assert report.ok and report.engines == ["vllm", "sglang"], report.lines()
    text = "\n".join(report.lines())
    for engine in ("vLLM V1", "vLLM V2", "SGLang"):
        assert f"{engine}: feeds the hidden states entering layers [1, 10, 20]" in text, text
    # only the top-level ids lost: vLLM's V2 runner would use its default, which these ids cannot be
    (tmp_path / "draft" / "config.json").write_text(json.dumps(
        {k: v for k, v in config.items() if k != "eagle_aux_hidden_state_layer_ids"}))
    report = inspect_draft(tmp_path / "draft")
    assert not report.ok and report.loads, report.lines()
    assert any(p.startswith("vLLM V2 would feed its default layers") for p in report.misread), report.misread
    assert any(p.startswith("vLLM V1 would feed layers [0, 9, 19]") for p in report.misread), report.misread




@pytest.mark.slow
def test_every_catalog_entry_validates_and_gemma3_served_by_vllm_is_refused_before_any_stage(tmp_path):
    """The installed vLLM's registry is asked: Gemma 3 lacks SupportsEagle3, so the entry as it was (vLLM serving
    and evaluating its EAGLE-3 draft) is refused by `run` before any stage starts; the entry itself now names
    SGLang, and every entry validates."""
    import subprocess
    import sys

    entries = sorted(str(p) for p in (PROJECT / "catalog").glob("*/*.toml"))
    valid = subprocess.run([sys.executable, "-m", "eagle_recipes.cli", "validate", *entries],
                           capture_output=True, text=True)
    assert valid.returncode == 0, valid.stdout[-3000:] + valid.stderr[-2000:]
    from eagle_recipes.engines.serving_targets import installed_vllm_version

    out = tmp_path / "run"
    refused = subprocess.run([sys.executable, "-m", "eagle_recipes.cli", "run",
                              str(PROJECT / "catalog/gemma3/gemma-3-1b-it.toml"), 'export.engines=["vllm"]',
                              "eval.engine=vllm", "--output-dir", str(out)], capture_output=True, text=True)
    said = refused.stdout + refused.stderr
    assert refused.returncode == 1 and "Traceback" not in said, said[-3000:]
    assert f"vLLM {installed_vllm_version()} cannot serve Gemma3ForCausalLM" in said, said[-3000:]
    assert "SupportsEagle3" in said and 'export.engines = ["sglang"]' in said, said[-3000:]
    assert not out.exists()  # no stage ran
