"""Export proven by real vLLM (the CPU build): drafts load, decoding stays lossless at T=0, and vLLM's acceptance
counters agree with the pure-PyTorch reference loop; a draft that copies a known target reaches tau = k + 1. Every
drafter's export served with the reference decoder's acceptance (a partly wrong copy draft) is tests/test_drafters.py's;
here EAGLE-3's layouts, variants and the evaluation around vLLM."""

from __future__ import annotations

import os
import shutil

import pytest

from eagle_recipes.engines.placement import CPU_ENGINE_ENV
from eagle_recipes.evaluation.prompt_sets import prompts_from_file
from eagle_recipes.evaluation.reference_path import evaluate_reference
from eagle_recipes.evaluation.vllm_path import evaluate_vllm
from eagle_recipes.run_folder import REPORT_FILE, REPORT_PLOT
from tests.builders import build_permutation_target, export_copy_draft, permutation, prompts_file

pytestmark = pytest.mark.slow  # real processes, engines or graph runs: `make test-fast` leaves these out

K = 3
MAX_TOKENS = 60


@pytest.fixture(scope="module")
def permutation_setup(tmp_path_factory):
    os.environ.update(CPU_ENGINE_ENV)  # the settings every in-process CPU engine gets
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
    vllm = evaluate_vllm(str(target), str(exact), {"method": "eagle3"}, K, [prompts], MAX_TOKENS)[0][prompts.name]
    # every draft accepted: only the last verify step of each prompt may be cut short by max_tokens
    assert reference.per_position == [1.0] * K
    assert reference.acceptance_length == K + 1
    assert all(rate > 0.9 for rate in vllm.per_position), vllm
    assert vllm.acceptance_length > K + 1 - 0.3, vllm
    assert reference.lossless and vllm.lossless


def test_per_request_acceptance_sums_to_vllms_own_counters(permutation_setup):
    """tau per prompt category comes from each request's histogram of accepted lengths (one batch per prompt set);
    over a batch those must add up to vLLM's engine-wide counters, position by position."""
    from eagle_recipes.evaluation.vllm_path import _chat, _counters, engine, request_acceptance

    target, _, partial, prompts = permutation_setup
    llm = engine(str(target), str(partial), {"method": "eagle3"}, K, "auto")
    drafts_before, per_position_before = _counters(llm)
    finished: list[int] = []
    outputs, _ = _chat(llm, prompts.prompts, MAX_TOKENS, None, finished.append)
    drafts_after, per_position_after = _counters(llm)
    per_request = [request_acceptance(output, K) for output in outputs]
    assert sum(a.drafts for a in per_request) == drafts_after - drafts_before > 0
    per_position_before = per_position_before or [0] * K
    assert [sum(a.accepted_per_position[i] for a in per_request) for i in range(K)] == [
        after - before for before, after in zip(per_position_before, per_position_after)]
    assert 0 < sum(a.accepted for a in per_request) < K * sum(a.drafts for a in per_request)  # partial, not trivial
    assert finished == list(range(1, len(prompts.prompts) + 1))  # the progress heard every finished request


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
    report = json.loads((tmp_path / "eval" / REPORT_FILE).read_text())
    assert report["acceptance_length"] == K + 1 and (tmp_path / "eval" / REPORT_PLOT).exists()


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
    vllm = evaluate_vllm(str(target), str(folder), {"method": "eagle3"}, K, [prompts], MAX_TOKENS)[0][prompts.name]
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


def test_speed_sweep_starts_one_engine_per_k_and_recommends_the_fastest(permutation_setup, monkeypatch):
    """The serving-speed sweep on real vLLM: the base alone measured once (k = 0), one engine per k from 1 to K,
    each at every load; the copy draft accepts at every k; the recommendation is the argmax of the table."""
    from eagle_recipes.evaluation import vllm_path
    from eagle_recipes.evaluation.speed import SpeedSettings

    target, exact, _, prompts = permutation_setup
    started, real_engine = [], vllm_path.engine

    def counted_engine(base, draft, speculative, k, dtype):  # the real engine, counted
        started.append((draft is not None, k))
        return real_engine(base, draft, speculative, k, dtype)

    monkeypatch.setattr(vllm_path, "engine", counted_engine)
    speed = SpeedSettings(concurrency=(1, 4), prompts=6, max_tokens=24)
    sets, table = evaluate_vllm(str(target), str(exact), {"method": "eagle3"}, K, [prompts], MAX_TOKENS, speed=speed,
                                speed_prompts=prompts.prompts)
    assert started == [(False, K), (True, 1), (True, 2), (True, 3)]
    assert [(r.k, r.concurrency) for r in table.rows] == [(k, load) for k in range(K + 1) for load in (1, 4)]
    assert all(r.prompts == 4 and r.tokens > 0 and r.tokens_per_s > 0 for r in table.rows)
    assert all(len(r.samples) == speed.repeats == 3 and min(r.samples) <= round(r.tokens_per_s, 2) <= max(r.samples)
               for r in table.rows)
    for load in (1, 4):
        rows = table.at(load)
        assert rows[0].k == 0 and rows[0].speedup == 1.0 and rows[0].acceptance_length == 1.0
        assert table.recommended(load) == max(rows, key=lambda r: r.tokens_per_s)
        for row in rows[1:]:  # every draft of the copy draft is accepted (the last step of a reply may be cut)
            assert row.acceptance_length > row.k + 1 - 0.5, row
            assert row.speedup == pytest.approx(row.tokens_per_s / rows[0].tokens_per_s)
    assert sets[prompts.name].lossless
    as_json = table.to_dict()
    assert set(as_json["rows"][0]) >= {"k", "concurrency", "tokens_per_s", "speedup", "acceptance_length"}
    assert set(as_json["recommended"]) == {"1", "4"} and len(as_json["advice"]) == 2


def _drafter(llm):
    """vLLM's own draft module of an in-process engine."""
    return llm.llm_engine.engine_core.engine_core.model_executor.driver_worker.worker.model_runner.drafter.model


def test_vllm_builds_the_eagle31_and_qwen3_variants_as_trained(permutation_setup, tmp_path):
    """A draft with every EAGLE-3.1 switch and the Qwen3-style layer: vLLM builds the same modules from the export
    (its combine of the aux states equals ours on the same input; its q/k norms hold our weights; it feeds the normed
    output back), and serves it losslessly."""
    import json

    import torch
    from vllm import LLM, SamplingParams

    from eagle_recipes.draft.config import BaseModelFacts
    from eagle_recipes.draft.drafters import build_draft, build_draft_config
    from eagle_recipes.draft.export import write_draft
    from eagle_recipes.draft.vocab import mapping_from_ids

    target, _, _, prompts = permutation_setup
    facts = BaseModelFacts.from_config(json.loads((target / "config.json").read_text()))
    config = build_draft_config("eagle3", {"intermediate_size": 64, "fc_norm": True, "norm_before_fc": True,
                                           "norm_output": True, "qk_norm": True}, facts, 64)
    torch.manual_seed(0)
    draft = build_draft(config)
    with torch.no_grad():
        for parameter in draft.parameters():
            parameter.normal_(1.0 if parameter.dim() == 1 else 0.0, 0.3)
    mapping = mapping_from_ids(list(range(64)), 65)
    folder = tmp_path / "variant"
    assert write_draft(folder, draft.state_dict(), config, "flat", "float32", str(target), K, mapping.d2t,
                       mapping.t2d).ok
    llm = LLM(model=str(target), dtype="float32", enforce_eager=True, max_model_len=1024, gpu_memory_utilization=0.3,
              speculative_config={"method": "eagle3", "model": str(folder), "num_speculative_tokens": K})
    served = _drafter(llm)
    assert type(served).__name__ == "Eagle3Qwen3ForCausalLM"
    assert served.model.norm_output and served.model.norm_before_fc and served.model.fc_norm is not None
    aux = torch.randn(5, 3 * 64)
    with torch.no_grad():
        torch.testing.assert_close(served.combine_hidden_states(aux), draft.fuse(aux), atol=1e-4, rtol=1e-4)
    attention = served.model.layers[0].self_attn
    torch.testing.assert_close(attention.q_norm.weight, draft.midlayer.self_attn.q_norm.weight.data)
    torch.testing.assert_close(attention.k_norm.weight, draft.midlayer.self_attn.k_norm.weight.data)
    params = SamplingParams(temperature=0, max_tokens=20)
    with_draft = [list(o.outputs[0].token_ids) for o in llm.chat(prompts.prompts, params, use_tqdm=False)]
    del llm
    alone = LLM(model=str(target), dtype="float32", enforce_eager=True, max_model_len=1024, gpu_memory_utilization=0.3)
    assert with_draft == [list(o.outputs[0].token_ids) for o in alone.chat(prompts.prompts, params, use_tqdm=False)]


def test_a_qwen3_layer_copy_draft_reaches_k_plus_one_only_with_its_qk_norms(permutation_setup, tmp_path):
    """The copy draft's queries and keys are blunt without their q/k norms: k + 1 in vLLM proves vLLM applies them
    (and the reference decoder agrees)."""
    target, _, _, prompts = permutation_setup
    perm = permutation()
    folder = export_copy_draft(tmp_path / "qk", target, perm, qk_norm=True)
    reference = evaluate_reference(str(target), folder, K, [prompts], MAX_TOKENS)[prompts.name]
    vllm = evaluate_vllm(str(target), str(folder), {"method": "eagle3"}, K, [prompts], MAX_TOKENS)[0][prompts.name]
    assert reference.acceptance_length == K + 1
    assert vllm.acceptance_length > K + 1 - 0.3 and vllm.lossless, vllm
