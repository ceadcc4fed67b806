"""`eagle-recipes catalog check`: every catalog family's architecture through the graph on this CPU, served by real
vLLM (the CPU build, its V1 runner) at the pure-PyTorch reference decoder's acceptance, and the catalog saying what
ran.

Fast: the tiny bases keep each family's structure; the catalog records a check for every entry; a record is what a
check writes and the schema refuses one without it. Slow: the command itself on SmolLM2 (vLLM synthesizes the
replies), the same draft served with its layer ids shifted by one fails it, a ModelOpt-style relaid folder of it is
served as trained by `eval`; then every other architecture the catalog names and DFlash, in the check's fast form
(transformers writes the replies, the graph skips synthesis; the recorded runs had vLLM synthesize them).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import tomllib

import pytest

from eagle_recipes import catalog
from eagle_recipes.catalog_check import K, MAX_TOKENS, PASSED, REFUSED, CheckResult, check_entry, record
from eagle_recipes.tiny_base import NUM_LAYERS, shrink_config, tiny_shape
from eagle_recipes.run_folder import SYNTHESIZE, RunFolder
from tests.helpers import CLI, PROJECT

CONFIGS = sorted((PROJECT / "catalog").glob("*/configs/*.json"))


# ---------------------------------------------------------------- fast: tiny bases, records
@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_a_tiny_base_keeps_its_familys_structure(path):
    full = json.loads(path.read_text())
    tiny = shrink_config(full, 49152, {"eos_token_id": 2})
    heads, kv = full["num_attention_heads"], full.get("num_key_value_heads") or full["num_attention_heads"]
    assert tiny["num_attention_heads"] // tiny["num_key_value_heads"] == heads // kv  # the GQA ratio
    full_head_dim = full.get("head_dim") or full["hidden_size"] // heads
    assert (tiny["head_dim"] * tiny["num_attention_heads"] / tiny["hidden_size"]
            == pytest.approx(full_head_dim * heads / full["hidden_size"]))  # head_dim against hidden / heads
    kept = {"architectures", "model_type", "rope_scaling", "rope_theta", "tie_word_embeddings", "attention_bias",
            "sliding_window", "hidden_act", "hidden_activation", "rms_norm_eps"}
    assert {k: tiny.get(k) for k in kept} == {k: full.get(k) for k in kept}
    if full.get("num_experts"):
        assert 1 < tiny["num_experts_per_tok"] < tiny["num_experts"]  # routed, top-k of several
    assert tiny["num_hidden_layers"] == NUM_LAYERS and tiny["hidden_size"] < 300


def test_deepseek_distill_is_llama_3_1_to_the_check():
    """Its tiny base is Llama-3.1-8B's (same class, GQA, head_dim, llama3 rope x8, untied): one suite run stands for
    both; the recorded check ran each."""
    deepseek, llama = (json.loads((PROJECT / f"catalog/{p}.json").read_text()) for p in
                       ("deepseek/configs/DeepSeek-R1-Distill-Llama-8B", "llama3/configs/Llama-3.1-8B-Instruct"))
    assert shrink_config(deepseek, 100, {}) == shrink_config(llama, 100, {})
    assert tiny_shape(deepseek) == tiny_shape(llama)


def test_every_entry_records_a_check_with_versions_and_date():
    for entry in catalog.entries():
        assert entry.tested in ("e2e-cpu", "e2e-gpu", PASSED, REFUSED), (entry.name, entry.tested)
        assert entry.checked.startswith("20") and "vLLM 0.32" in entry.checked and "transformers" in entry.checked, \
            (entry.name, entry.checked)
    refused = [e.name for e in catalog.entries() if e.tested == REFUSED]
    assert refused == ["gemma3/gemma-3-1b-it"], refused  # vLLM 0.32 feeds a Gemma 3 target's draft no aux states


def _result(**changes) -> CheckResult:
    fields = dict(entry="qwen3/Qwen3-8B", architecture="Qwen3ForCausalLM", algorithm="eagle3", passed=True,
                  vllm_per_position=[0.9, 0.8, 0.7], reference_per_position=[0.9, 0.8, 0.7], vllm_tau=3.4,
                  reference_tau=3.4, lossless=True, versions="vLLM 0.32.0, transformers 5.19.0")
    return CheckResult(**{**fields, **changes})


def test_a_check_writes_its_record_and_the_schema_wants_one(tmp_path):
    from datetime import date

    from eagle_recipes.recipe import validate_file

    folder = tmp_path / "catalog" / "qwen3"
    shutil.copytree(PROJECT / "catalog/qwen3", folder)
    path = folder / "Qwen3-8B.toml"
    unchecked = re.sub(r'^checked = .*\n', "", path.read_text(), flags=re.M)
    path.write_text(re.sub(r'^tested = .*$', 'tested = "compiled"', unchecked, flags=re.M))
    (entry,) = [e for e in catalog.entries(tmp_path / "catalog") if e.name == "qwen3/Qwen3-8B"]
    assert entry.tested == "compiled" and not entry.checked
    record(entry, _result(), today=date(2026, 12, 7))
    (entry,) = [e for e in catalog.entries(tmp_path / "catalog") if e.name == "qwen3/Qwen3-8B"]
    assert entry.tested == PASSED and entry.checked.startswith("2026-12-07, vLLM 0.32.0, transformers 5.19.0")
    assert validate_file(path, check_model=False)[1] == []
    with pytest.raises(catalog.CatalogError, match="a failed check is not recorded"):
        record(entry, _result(passed=False, problem="vLLM's acceptance differs"))

    # tested = architecture-cpu without what ran: the schema refuses it
    path.write_text(re.sub(r'^checked = .*\n', "", path.read_text(), flags=re.M))
    problems = validate_file(path, check_model=False)[1]
    assert [p.key for p in problems] == ["catalog.checked"], problems


def test_catalog_list_shows_what_each_check_found():
    done = subprocess.run([*CLI, "catalog", "list"], capture_output=True, text=True, env={"COLUMNS": "250",
                                                                                         "PATH": "/usr/bin:/bin"})
    assert done.returncode == 0, done.stderr
    assert "checked" in done.stdout and "(refused)" in done.stdout and PASSED in done.stdout, done.stdout


def test_gemma_3_is_refused_by_the_capability_check_before_any_work(tmp_path):
    result = check_entry(catalog.find("gemma3/gemma-3-1b-it"), tmp_path)
    assert result.refused and "Gemma3ForCausalLM" in result.refused and "SupportsEagle3" in result.refused
    assert not (tmp_path / "run").exists()  # nothing ran


# ---------------------------------------------------------------- slow: the command, and every architecture
@pytest.fixture(scope="module")
def smollm2_check(tmp_path_factory):
    """`catalog check` on the SmolLM2 entry (its recipe's Qwen3-style draft layer): vLLM synthesizes, the graph
    runs, vLLM serves; nothing is recorded."""
    work = tmp_path_factory.mktemp("catalog-check")
    done = subprocess.run([*CLI, "catalog", "check", "smollm2/SmolLM2-135M-Instruct", "--work-dir", str(work),
                           "--no-record"], capture_output=True, text=True, timeout=1500)
    return work / "smollm2--SmolLM2-135M-Instruct", done


@pytest.mark.slow
def test_the_check_passes_on_smollm2_and_fails_when_the_served_layers_are_shifted(smollm2_check):
    folder, done = smollm2_check
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "smollm2/SmolLM2-135M-Instruct (LlamaForCausalLM, eagle3): passed" in done.stdout, done.stdout[-2000:]
    synthesized = json.loads(RunFolder(folder / "run").manifest_file(SYNTHESIZE).read_text())["counts"]
    assert synthesized["generated_this_run"] == 8, synthesized  # vLLM wrote every reply
    assert "recorded" not in done.stdout
    shifted = subprocess.run([*CLI, "catalog", "check", "smollm2/SmolLM2-135M-Instruct", "--work-dir",
                              str(folder.parent), "--shift-served-layers", "1"], capture_output=True, text=True,
                             timeout=900)
    assert shifted.returncode == 1, shifted.stdout[-3000:] + shifted.stderr[-3000:]
    assert "FAILED: vLLM's acceptance differs from the reference decoder's" in shifted.stdout, shifted.stdout[-2000:]
    assert "recorded" not in shifted.stdout


@pytest.mark.slow
def test_eval_serves_a_modelopt_style_export_with_the_layers_it_was_trained_on(smollm2_check, tmp_path):
    """ModelOpt and SpecForge write the ids nested alone, in SGLang's numbering: vLLM V1 would read them one
    shallower; `eval` serves a copy with the trained ids at the top level, at the reference decoder's acceptance."""
    from eagle_recipes.evaluation.prompt_sets import prompts_from_file
    from eagle_recipes.evaluation.reference_path import evaluate_reference
    from eagle_recipes.run_folder import REPORT_FILE

    work, _ = smollm2_check
    draft = work / "run/export/draft"
    trained = json.loads((draft / "config.json").read_text())["eagle_aux_hidden_state_layer_ids"]
    folder = tmp_path / "modelopt"
    shutil.copytree(draft, folder)
    config = json.loads((folder / "config.json").read_text())
    config.pop("eagle_aux_hidden_state_layer_ids")
    config["eagle_config"]["eagle_aux_hidden_state_layer_ids"] = [i - 1 for i in trained]
    (folder / "config.json").write_text(json.dumps(config))
    written = (folder / "config.json").read_bytes()
    inspect = subprocess.run([*CLI, "inspect", str(folder)], capture_output=True, text=True)
    assert inspect.returncode == 1 and f"vLLM V1 would feed layers {[i - 1 for i in trained]}" in inspect.stdout, \
        inspect.stdout
    out = tmp_path / "eval"
    done = subprocess.run([*CLI, "eval", "--base", str(work / "base"), "--draft", str(folder), "--prompts",
                           str(work / "prompts.jsonl"), "-k", str(K), "--max-tokens", str(MAX_TOKENS), "--out",
                           str(out), "--concurrency", "none"], capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "serving a copy" in done.stdout and f"{trained}" in done.stdout, done.stdout[-2000:]
    assert (folder / "config.json").read_bytes() == written  # the user's folder is never edited
    report = json.loads((out / REPORT_FILE).read_text())["sets"]["prompts"]
    prompts = prompts_from_file(work / "prompts.jsonl")
    reference = evaluate_reference(str(work / "base"), draft, K, [prompts], MAX_TOKENS)[prompts.name]
    assert report["identical"] == report["prompts"] == 8
    assert all(abs(a - b) <= 0.1 for a, b in zip(report["per_position"], reference.per_position, strict=True)), \
        (report, reference)


# one entry per architecture the catalog names beside SmolLM2's (DeepSeek's is Llama-3.1's), and DFlash
FAMILIES = ["llama3/Llama-3.1-8B-Instruct", "qwen2.5/Qwen2.5-7B-Instruct", "qwen3/Qwen3-8B", "qwen3/Qwen3-30B-A3B",
            "mistral/Mistral-7B-Instruct-v0.3", "phi4/phi-4", "qwen3/Qwen3-8B-DFlash"]


@pytest.mark.slow
@pytest.mark.parametrize("name", FAMILIES)
def test_every_family_is_served_by_vllm_as_the_reference_decoder_drafts(name, tmp_path, ray_session):
    """The check's fast form: tokenize .. evaluate in the graph on one shared Ray, vLLM serving the draft."""
    result = check_entry(catalog.find(name), tmp_path, synthesize_in_vllm=False, steps=120)
    assert result.passed, result.summary()
    assert result.lossless and result.reference_per_position[0] >= 0.3, result.summary()


def _architecture(name: str) -> str:
    entry = catalog.find(name)
    config = tomllib.loads(entry.path.read_text())["model"]["config"]
    return json.loads((entry.path.parent / config).read_text())["architectures"][0]


def test_the_suite_runs_every_architecture_and_drafter_the_catalog_ships():
    """With SmolLM2's run above and Gemma 3's refusal, FAMILIES cover every class and drafter in catalog/."""
    shipped = {(_architecture(e.name), e.algorithm) for e in catalog.entries()}
    run = {(_architecture(n), catalog.find(n).algorithm) for n in FAMILIES} | {("LlamaForCausalLM", "eagle3")}
    assert {arch for arch, _ in shipped} - {arch for arch, _ in run} == {"Gemma3ForCausalLM"}
    assert {algorithm for _, algorithm in shipped} == {algorithm for _, algorithm in run} == {"eagle3", "dflash"}

