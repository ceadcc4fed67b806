"""Export proven by real vLLM (the CPU build): drafts load, decoding stays lossless at T=0, and vLLM's acceptance
counters agree with the pure-PyTorch reference loop; a draft that copies a known target reaches tau = k + 1."""

from __future__ import annotations

import os
import shutil

import pytest

from eagle_recipes.evaluation.prompt_sets import prompts_from_file
from eagle_recipes.evaluation.reference_path import evaluate_reference
from eagle_recipes.evaluation.vllm_path import evaluate_vllm
from tests.builders import build_permutation_target, export_copy_draft, permutation, prompts_file

K = 3
MAX_TOKENS = 60


@pytest.fixture(scope="module")
def permutation_setup(tmp_path_factory):
    os.environ.update({"VLLM_CPU_KVCACHE_SPACE": "1", "VLLM_ENABLE_V1_MULTIPROCESSING": "0",
                       "VLLM_CPU_NUM_OF_RESERVED_CPU": "0"})
    folder = tmp_path_factory.mktemp("perm")
    perm = permutation()
    target = build_permutation_target(folder / "target", perm)
    exact = export_copy_draft(folder / "exact", target, perm)
    partial = export_copy_draft(folder / "partial", target, perm, wrong=set(range(0, 64, 3)))
    prompts = prompts_from_file(prompts_file(folder / "prompts.jsonl"))
    return target, exact, partial, prompts


def test_copy_draft_reaches_k_plus_one_in_both_paths(permutation_setup):
    target, exact, _, prompts = permutation_setup
    reference = evaluate_reference(str(target), exact, K, [prompts], MAX_TOKENS)[prompts.name]
    vllm = evaluate_vllm(str(target), str(exact), "eagle3", K, [prompts], MAX_TOKENS)[prompts.name]
    # every draft accepted: only the last verify step of each prompt may be cut short by max_tokens
    assert reference.per_position == [1.0] * K
    assert reference.acceptance_length == K + 1
    assert all(rate > 0.9 for rate in vllm.per_position), vllm
    assert vllm.acceptance_length > K + 1 - 0.3, vllm
    assert reference.lossless and vllm.lossless


def test_vllm_and_reference_agree_on_a_partial_draft(permutation_setup):
    target, _, partial, prompts = permutation_setup
    reference = evaluate_reference(str(target), partial, K, [prompts], MAX_TOKENS)[prompts.name]
    vllm = evaluate_vllm(str(target), str(partial), "eagle3", K, [prompts], MAX_TOKENS)[prompts.name]
    assert 1.3 < reference.acceptance_length < K + 0.7  # partial acceptance, not a trivial case
    assert abs(vllm.acceptance_length - reference.acceptance_length) < 0.15, (vllm, reference)
    assert vllm.lossless, vllm.identical_outputs
    assert vllm.tokens_per_s_with_draft > 0 and vllm.tokens_per_s_target_alone > 0


def test_eval_command_on_any_draft_folder(permutation_setup, tmp_path):
    import json
    import subprocess
    import sys

    target, exact, _, _ = permutation_setup
    prompts = prompts_file(tmp_path / "p.jsonl", count=3)
    out = subprocess.run([sys.executable, "-m", "eagle_recipes.cli", "eval", "--base", str(target), "--draft",
                          str(exact), "--prompts", str(prompts), "-k", str(K), "--max-tokens", "30",
                          "--engine", "reference", "--out", str(tmp_path / "eval")], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-3000:]
    assert f"tau = {K + 1:.3f}" in out.stdout
    report = json.loads((tmp_path / "eval" / "report.json").read_text())
    assert report["acceptance_length"] == K + 1 and (tmp_path / "eval" / "per_position.png").exists()


def test_vllm_serves_a_draft_in_modelopts_layout(permutation_setup, tmp_path):
    """The exact draft re-laid out as ModelOpt 0.47 writes it (first layer `layers.0.`, no `t2d`): inspect passes
    it and real vLLM loads it with every weight in place (tau stays k + 1)."""
    import json

    from safetensors.torch import load_file, save_file

    from eagle_recipes.draft.inspect import inspect_draft

    target, exact, _, prompts = permutation_setup
    folder = tmp_path / "modelopt"
    folder.mkdir()
    tensors = load_file(str(exact / "model.safetensors"))
    tensors = {("layers.0." + k[len("midlayer."):]) if k.startswith("midlayer.") else k: v
               for k, v in tensors.items() if k != "t2d"}
    save_file(tensors, str(folder / "model.safetensors"))
    config = json.loads((exact / "config.json").read_text())
    config["eagle_config"].update(use_input_layernorm_in_first_layer=True, use_last_layernorm=True)
    (folder / "config.json").write_text(json.dumps(config))
    assert inspect_draft(folder).ok, inspect_draft(folder).lines()
    vllm = evaluate_vllm(str(target), str(folder), "eagle3", K, [prompts], MAX_TOKENS)[prompts.name]
    assert vllm.acceptance_length > K + 1 - 0.3 and vllm.lossless, vllm


def test_vllm_serves_a_long_context_export_with_the_rope_it_says(permutation_setup, tmp_path):
    """export.rope_scaling reaches vLLM: the draft's rotary embedding is YaRN with the factor and original length
    written, and decoding stays lossless."""
    import json

    from vllm import LLM, SamplingParams

    target, exact, _, prompts = permutation_setup
    folder = tmp_path / "yarn"
    shutil.copytree(exact, folder)
    config = json.loads((folder / "config.json").read_text())
    config.update(rope_scaling={"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 1024},
                  max_position_embeddings=4096)
    (folder / "config.json").write_text(json.dumps(config))
    llm = LLM(model=str(target), dtype="float32", enforce_eager=True, max_model_len=1024, gpu_memory_utilization=0.3,
              speculative_config={"method": "eagle3", "model": str(folder), "num_speculative_tokens": K})
    # vLLM's own objects (in-process engine): the drafter it built from the folder
    runner = llm.llm_engine.engine_core.engine_core.model_executor.driver_worker.worker.model_runner
    rotary = runner.drafter.model.model.layers[0].self_attn.rotary_emb
    assert type(rotary).__name__ == "YaRNScalingRotaryEmbedding"
    assert rotary.scaling_factor == 4.0 and rotary.max_position_embeddings == 1024
    with_draft = [o.outputs[0].token_ids for o in llm.chat(prompts.prompts, SamplingParams(temperature=0, max_tokens=20),
                                                            use_tqdm=False)]
    del llm
    alone = LLM(model=str(target), dtype="float32", enforce_eager=True, max_model_len=1024, gpu_memory_utilization=0.3)
    without = [o.outputs[0].token_ids for o in alone.chat(prompts.prompts, SamplingParams(temperature=0, max_tokens=20),
                                                           use_tqdm=False)]
    assert [list(t) for t in with_draft] == [list(t) for t in without]
