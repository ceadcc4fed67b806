"""Export layouts round-trip, and `inspect` catches broken drafts by tensor name."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file, save_file

from eagle_recipes.draft.config import BaseModelFacts
from eagle_recipes.draft.drafters import build_draft, build_draft_config
from eagle_recipes.draft.inspect import inspect_draft
from eagle_recipes.draft.layouts import load_draft_module
from eagle_recipes.draft.vocab import mapping_from_ids
from eagle_recipes.draft.export import write_draft
from tests.helpers import PROJECT

SMOL = json.loads((PROJECT / "catalog/smollm2/configs/SmolLM2-135M-Instruct.json").read_text())
SMALL = {**SMOL, "hidden_size": 64, "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 16,
         "intermediate_size": 128, "vocab_size": 500, "num_hidden_layers": 8}


def _draft(algorithm="eagle3", layers=1, draft_vocab=100):
    config = build_draft_config(algorithm, {"num_hidden_layers": layers}, BaseModelFacts.from_config(SMALL),
                                draft_vocab)
    torch.manual_seed(0)
    return build_draft(config), config


@pytest.mark.parametrize("algorithm,layout,layers", [("eagle3", "flat", 1), ("eagle3", "flat", 2),
                                                     ("eagle3", "speculators", 2), ("eagle1", "eagle1", 1)])
def test_round_trip_gives_the_same_weights(tmp_path, algorithm, layout, layers):
    draft, config = _draft(algorithm, layers, 100 if algorithm == "eagle3" else 500)
    mapping = mapping_from_ids(torch.arange(100) * 3, 500)
    report = write_draft(tmp_path / "draft", draft.state_dict(), config, layout, "float32", "base", 5,
                         mapping.d2t, mapping.t2d)
    assert report.ok, report.lines()
    assert report.layout == layout
    loaded, loaded_config, d2t = load_draft_module(tmp_path / "draft")
    original = draft.state_dict()
    assert set(loaded.state_dict()) == set(original)
    for name, tensor in loaded.state_dict().items():
        assert torch.equal(tensor, original[name]), name
    assert loaded_config.aux_layer_ids == config.aux_layer_ids
    if algorithm == "eagle3":
        assert torch.equal(d2t, mapping.d2t)
    readme = (tmp_path / "draft" / "README.md").read_text()
    assert "vllm serve base --speculative-config" in readme
    # SGLang loads the flat layout's Llama layer alone (not speculators, not EAGLE-1 as vLLM takes it)
    assert report.engines == (["vllm", "sglang"] if layout == "flat" else ["vllm"])
    assert ("sglang.launch_server" in readme) == (layout == "flat")


def test_full_vocabulary_leaves_out_d2t(tmp_path):
    draft, config = _draft(draft_vocab=500)
    report = write_draft(tmp_path / "draft", draft.state_dict(), config, "flat", "bfloat16", "base", 5)
    assert report.ok
    assert "d2t" not in load_file(str(tmp_path / "draft" / "model.safetensors"))


def _break(tmp_path, mutate):
    draft, config = _draft()
    mapping = mapping_from_ids(torch.arange(100) * 3, 500)
    write_draft(tmp_path / "draft", draft.state_dict(), config, "flat", "bfloat16", "base", 5, mapping.d2t, mapping.t2d)
    path = tmp_path / "draft" / "model.safetensors"
    tensors = load_file(str(path))
    mutate(tensors)
    save_file(tensors, str(path))
    return inspect_draft(tmp_path / "draft")


@pytest.mark.parametrize("mutate,words", [
    (lambda t: t.pop("midlayer.hidden_norm.weight"), "missing tensor midlayer.hidden_norm.weight"),
    (lambda t: t.__setitem__("fc.bias", torch.zeros(64, dtype=torch.bfloat16)), "unexpected tensor fc.bias (a bias"),
    (lambda t: t.__setitem__("d2t", torch.zeros(99, dtype=torch.int64)), "tensor d2t has shape [99], expected [100]"),
    (lambda t: t.__setitem__("lm_head.weight", torch.zeros(100, 32, dtype=torch.bfloat16)),
     "tensor lm_head.weight has shape [100, 32], expected [100, 64]"),
    (lambda t: t.__setitem__("d2t", torch.zeros(100, dtype=torch.int32)), "tensor d2t has dtype I32, expected I64"),
])
def test_inspect_catches_broken_exports(tmp_path, mutate, words):
    report = _break(tmp_path, mutate)
    assert not report.ok
    assert any(words in problem for problem in report.problems), report.problems


def test_inspect_command_exit_codes(tmp_path):
    _break(tmp_path, lambda t: t.pop("norm.weight"))
    out = subprocess.run([sys.executable, "-m", "eagle_recipes.cli", "inspect", str(tmp_path / "draft")],
                         capture_output=True, text=True)
    assert out.returncode == 1 and "missing tensor norm.weight" in out.stdout and "BROKEN" in out.stdout


def test_inspect_flags_missing_aux_ids(tmp_path):
    draft, config = _draft()
    write_draft(tmp_path / "draft", draft.state_dict(), config, "flat", "bfloat16", "base", 5,
                *(lambda m: (m.d2t, m.t2d))(mapping_from_ids(torch.arange(100), 500)))
    path = tmp_path / "draft" / "config.json"
    data = json.loads(path.read_text())
    del data["eagle_config"], data["eagle_aux_hidden_state_layer_ids"]
    path.write_text(json.dumps(data))
    report = inspect_draft(tmp_path / "draft")
    assert any("eagle_aux_hidden_state_layer_ids not written" in p for p in report.problems)


# ---------------------------------------------------------------- peers' layouts, built from their documented names
def _peer_folder(folder, config: dict, tensors: dict) -> None:
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(config))
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(folder / "model.safetensors"))


def _llama_config(config) -> dict:
    return {"model_type": "llama", "hidden_size": config.hidden_size, "intermediate_size": config.intermediate_size,
            "num_hidden_layers": config.num_hidden_layers, "num_attention_heads": config.num_attention_heads,
            "num_key_value_heads": config.num_key_value_heads, "head_dim": config.head_dim, "hidden_act": "silu",
            "rms_norm_eps": config.rms_norm_eps, "rope_theta": config.rope_theta,
            "max_position_embeddings": config.max_position_embeddings, "vocab_size": config.vocab_size,
            "tie_word_embeddings": False, "torch_dtype": "bfloat16"}


def sglang_numbering(aux_layer_ids) -> list[int]:
    """SpecForge and ModelOpt write the layer outputs SGLang reads: our id k (the input of layer k) is their k - 1."""
    return [i - 1 for i in aux_layer_ids]


def modelopt_draft(folder, draft, config, mapping) -> None:
    """As NVIDIA ModelOpt 0.47 exports an EAGLE-3 draft for vLLM: the first layer under `layers.0.`, `d2t` and no
    `t2d`, the aux layer ids and ModelOpt's layer-norm switches in `eagle_config`."""
    tensors = {("layers.0." + k[len("midlayer."):]) if k.startswith("midlayer.") else k: v.to(torch.bfloat16)
               for k, v in draft.state_dict().items()}
    tensors["d2t"] = mapping.d2t
    _peer_folder(folder, {**_llama_config(config), "architectures": ["LlamaForCausalLMEagle3"],
                          "draft_vocab_size": config.draft_vocab_size, "eagle_config": {
                              "eagle_aux_hidden_state_layer_ids": sglang_numbering(config.aux_layer_ids),
                              "use_aux_hidden_state": True, "use_input_layernorm_in_first_layer": True,
                              "use_last_layernorm": True, "use_mtp_layernorm": False}}, tensors)


def specforge_draft(folder, draft, config, mapping) -> None:
    """As SpecForge saves an EAGLE-3 draft: `midlayer.*`, `d2t` and `t2d`, and the frozen `embed_tokens` copy."""
    tensors = {k: v.to(torch.bfloat16) for k, v in draft.state_dict().items()}
    tensors.update(d2t=mapping.d2t, t2d=mapping.t2d,
                   **{"embed_tokens.weight": torch.zeros(config.vocab_size, config.hidden_size, dtype=torch.bfloat16)})
    _peer_folder(folder, {**_llama_config(config), "architectures": ["LlamaForCausalLMEagle3"],
                          "draft_vocab_size": config.draft_vocab_size,
                          "eagle_config": {"eagle_aux_hidden_state_layer_ids":
                                           sglang_numbering(config.aux_layer_ids)}}, tensors)


def speculators_draft(folder, draft, config, mapping) -> None:
    """As vLLM's speculators library saves an Eagle3Speculator: `layers.0.` first layer, the Llama fields nested
    in `transformer_layer_config`, `d2t`, `t2d` and `embed_tokens`."""
    tensors = {("layers.0." + k[len("midlayer."):]) if k.startswith("midlayer.") else k: v.to(torch.bfloat16)
               for k, v in draft.state_dict().items()}
    tensors.update(d2t=mapping.d2t, t2d=mapping.t2d,
                   **{"embed_tokens.weight": torch.zeros(config.vocab_size, config.hidden_size, dtype=torch.bfloat16)})
    _peer_folder(folder, {"architectures": ["Eagle3Speculator"], "speculators_model_type": "eagle3",
                          "transformer_layer_config": _llama_config(config), "draft_vocab_size":
                          config.draft_vocab_size, "norm_before_residual": False, "target_hidden_size": None,
                          "eagle_aux_hidden_state_layer_ids": list(config.aux_layer_ids),
                          "speculators_config": {"algorithm": "eagle3", "default_proposal_method": "greedy",
                                                 "proposal_methods": [{"proposal_type": "greedy",
                                                                       "speculative_tokens": 3}],
                                                 "verifier": {"name_or_path": "base",
                                                              "architectures": ["LlamaForCausalLM"]}}}, tensors)


PEERS = {"modelopt": (modelopt_draft, "flat"), "specforge": (specforge_draft, "flat"),
         "speculators": (speculators_draft, "speculators")}


@pytest.mark.parametrize("peer", PEERS)
def test_peer_drafts_pass_inspect_and_load_with_their_weights(tmp_path, peer):
    write, layout = PEERS[peer]
    draft, config = _draft()
    mapping = mapping_from_ids(torch.arange(100) * 3, 500)
    write(tmp_path / peer, draft, config, mapping)
    report = inspect_draft(tmp_path / peer)
    assert report.loads and report.layout == layout, report.lines()
    # SpecForge and ModelOpt nest SGLang's numbering alone: vLLM's V1 runner reads it raw, one layer shallower
    assert report.misread == ([] if peer == "speculators" else [
        f"vLLM V1 would feed layers {[i - 1 for i in config.aux_layer_ids]} (eagle_config."
        f"eagle_aux_hidden_state_layer_ids), not the trained {list(config.aux_layer_ids)}"]), report.lines()
    loaded, loaded_config, d2t = load_draft_module(tmp_path / peer)
    assert torch.equal(d2t, mapping.d2t) and loaded_config.aux_layer_ids == config.aux_layer_ids
    for name, tensor in loaded.state_dict().items():
        assert torch.equal(tensor, draft.state_dict()[name].to(torch.bfloat16).float()), name


@pytest.mark.parametrize("peer,breakage,words", [
    ("modelopt", lambda t: t.pop("d2t"), "missing tensor d2t"),
    ("modelopt", lambda t: t.pop("layers.0.hidden_norm.weight"), "missing tensor layers.0.hidden_norm.weight"),
    ("specforge", lambda t: t.__setitem__("embed_tokens.weight", torch.zeros(7, 64, dtype=torch.bfloat16)),
     "tensor embed_tokens.weight has shape [7, 64], expected [500, 64]"),
    ("specforge", lambda t: t.__setitem__("layers.0.mlp.up_proj.weight", torch.zeros(128, 64, dtype=torch.bfloat16)),
     "unexpected tensor layers.0.mlp.up_proj.weight"),  # beside midlayer.*: vLLM would load one over the other
    ("speculators", lambda t: t.pop("layers.0.input_layernorm.weight"), "missing tensor layers.0.input_layernorm"),
])
def test_peer_drafts_still_fail_by_name_when_broken(tmp_path, peer, breakage, words):
    write, _ = PEERS[peer]
    draft, config = _draft()
    write(tmp_path / peer, draft, config, mapping_from_ids(torch.arange(100) * 3, 500))
    path = tmp_path / peer / "model.safetensors"
    tensors = load_file(str(path))
    breakage(tensors)
    save_file(tensors, str(path))
    report = inspect_draft(tmp_path / peer)
    assert not report.ok and any(words in problem for problem in report.problems), report.problems


def test_long_context_export_writes_the_rope_scaling_and_inspect_checks_it(tmp_path):
    from eagle_recipes.draft.layouts import with_long_context

    draft, config = _draft()
    mapping = mapping_from_ids(torch.arange(100) * 3, 500)
    yarn = {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 1024}
    report = write_draft(tmp_path / "draft", draft.state_dict(), with_long_context(config, yarn), "flat", "float32",
                         "base", 5, mapping.d2t, mapping.t2d)
    written = json.loads((tmp_path / "draft" / "config.json").read_text())
    assert written["rope_scaling"] == yarn and written["max_position_embeddings"] == 4096
    assert report.ok and any("long context: rope yarn x4, served up to 4,096 tokens" in n for n in report.notes)
    loaded, loaded_config, _ = load_draft_module(tmp_path / "draft")
    assert loaded_config.rope_scaling == yarn  # the reference decoder builds the same rope the engine does
    written["rope_scaling"] = {"rope_type": "yarn", "factor": 0.5}
    (tmp_path / "draft" / "config.json").write_text(json.dumps(written))
    problems = inspect_draft(tmp_path / "draft").problems
    assert any("rope_scaling.factor is 0.5" in p for p in problems)
    assert any("yarn rope scaling lacks original_max_position_embeddings" in p for p in problems)
