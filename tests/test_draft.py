"""Draft architectures: defaults + overrides, the TTT attention, gradients, and full-size builds of every catalog
entry on the meta device (no weights) checked against the tensor names and shapes the serving layouts need."""

from __future__ import annotations

import json

import pytest
import torch

from eagle_recipes.draft.config import BaseModelFacts, DraftConfigError, default_aux_layer_ids
from eagle_recipes.draft.drafters import build_draft, build_draft_config, valid_fields
from eagle_recipes.draft.export import export_layout
from eagle_recipes.draft.layouts import config_facts, layout_config, optional_tensors, required_tensors, to_layout
from eagle_recipes.draft.model import Attention, TTTCache
from eagle_recipes.draft.target_outputs import TargetOutputs
from eagle_recipes.draft.ttt import ttt_loss
from eagle_recipes.recipe import load_recipe
from tests.helpers import PROJECT

SMOL = json.loads((PROJECT / "catalog/smollm2/configs/SmolLM2-135M-Instruct.json").read_text())


def facts(**changes):
    return BaseModelFacts.from_config({**SMOL, **changes})


def test_defaults_follow_the_base_model():
    config = build_draft_config("eagle3", {}, facts(), 4096)
    assert config.num_hidden_layers == 1 and config.hidden_size == 576 and config.intermediate_size == 1536
    assert config.aux_layer_ids == (2, 15, 27) == tuple(default_aux_layer_ids(30))
    assert config.draft_vocab_size == 4096 and config.vocab_size == 49152
    assert config.rope_theta == 100000.0 and config.num_key_value_heads == 3


def test_overrides_change_the_built_module():
    base = build_draft(build_draft_config("eagle3", {}, facts(), 1000))
    bigger = build_draft(build_draft_config("eagle3", {"num_hidden_layers": 2, "intermediate_size": 4096},
                                            facts(), 1000))
    assert len(base.decoder_layers()) == 1 and len(bigger.decoder_layers()) == 2
    assert bigger.midlayer.mlp.gate_proj.weight.shape == (4096, 576)
    assert bigger.layers[0].self_attn.q_proj.weight.shape == (576, 576)  # later layers read H, not 2H
    assert bigger.midlayer.self_attn.q_proj.weight.shape == (576, 2 * 576)
    assert sum(p.numel() for p in bigger.parameters()) > sum(p.numel() for p in base.parameters())


def test_unknown_override_lists_valid_fields_and_nested_tables_merge():
    with pytest.raises(DraftConfigError, match="valid fields: " + ", ".join(valid_fields("eagle3"))):
        build_draft_config("eagle3", {"num_layers": 2}, facts(), 1000)
    scaled = facts(rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0})
    config = build_draft_config("eagle3", {"rope_scaling": {"factor": 4.0}}, scaled, 1000)
    assert config.rope_scaling == {"rope_type": "llama3", "factor": 4.0, "low_freq_factor": 1.0}


def test_small_targets_get_distinct_aux_ids():
    with pytest.raises(DraftConfigError, match="repeat a layer"):
        build_draft_config("eagle3", {"aux_layer_ids": [1, 1, 2]}, facts(), 10)
    assert default_aux_layer_ids(6) == [2, 3]


def ttt_attention_mask(seq_len: int, step: int, device=None) -> torch.Tensor:
    """Boolean [T, T + step] mask: which keys position t may see at unroll step `step` (the specification the attention is tested against)."""
    causal = torch.ones(seq_len, seq_len, dtype=torch.bool, device=device).tril()
    diagonal = torch.ones(seq_len, step, dtype=torch.bool, device=device)  # one own key per earlier step
    return torch.cat([causal, diagonal], dim=1)


def test_ttt_mask_matches_a_hand_computed_case():
    expected = torch.tensor([
        [1, 0, 0, 1, 1],
        [1, 1, 0, 1, 1],
        [1, 1, 1, 1, 1],
    ], dtype=torch.bool)
    assert torch.equal(ttt_attention_mask(3, 2), expected)


def test_ttt_attention_equals_explicit_masked_attention():
    """The cache-based attention at step 2 equals softmax attention over [step-0 keys causal, own keys]."""
    config = build_draft_config("eagle3", {}, facts(hidden_size=32, num_attention_heads=2, num_key_value_heads=1,
                                                    head_dim=16, intermediate_size=64), 100)
    torch.manual_seed(0)
    attention = Attention(config, 32)
    cache = TTTCache()
    xs = [torch.randn(1, 4, 32) for _ in range(3)]
    positions = torch.arange(4)[None]
    from eagle_recipes.draft.model import _rotary

    cos, sin = _rotary(config)(xs[0], positions)
    outs = [attention(x, cos, sin, cache, None) for x in xs]
    q = attention.q_proj(xs[2]).view(1, 4, 2, 16).transpose(1, 2)
    from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

    keys = []
    for x in xs:
        k = attention.k_proj(x).view(1, 4, 1, 16).transpose(1, 2)
        _, k = apply_rotary_pos_emb(q, k, cos, sin)
        keys.append(k.repeat_interleave(2, dim=1))
    q, _ = apply_rotary_pos_emb(q, keys[0], cos, sin)
    values = [attention.v_proj(x).view(1, 4, 1, 16).transpose(1, 2).repeat_interleave(2, dim=1) for x in xs]
    mask = ttt_attention_mask(4, 2)
    for t in range(4):
        scores, vals = [], []
        for s in range(4):
            if mask[t, s]:
                scores.append((q[:, :, t] * keys[0][:, :, s]).sum(-1) / 4.0)
                vals.append(values[0][:, :, s])
        for step in (1, 2):
            scores.append((q[:, :, t] * keys[step][:, :, t]).sum(-1) / 4.0)
            vals.append(values[step][:, :, t])
        weights = torch.softmax(torch.stack(scores, -1), -1)
        out = (weights[..., None] * torch.stack(vals, -2)).sum(-2)
        expected = attention.o_proj(out.reshape(1, 32))
        assert torch.allclose(outs[2][0, t], expected[0], atol=1e-5)


def _fake_target(batch=2, seq=12, hidden=64, aux=3, vocab=100, draft_vocab=40):
    torch.manual_seed(1)
    logits = torch.randn(batch, seq, vocab)
    draft_ids = torch.arange(draft_vocab) * 2
    t2d = torch.zeros(vocab, dtype=torch.bool)
    t2d[draft_ids] = True
    return TargetOutputs(input_ids=torch.randint(0, vocab, (batch, seq)), loss_mask=torch.ones(batch, seq, dtype=torch.long),
                         padding=torch.ones(batch, seq, dtype=torch.long),
                         draft_logits=logits.index_select(-1, draft_ids), top_in_draft=t2d[logits.argmax(-1)] | True,
                         hidden=torch.randn(batch, seq, aux * hidden))


def test_ttt_loss_weights_by_decay():
    config = build_draft_config("eagle3", {}, facts(hidden_size=64, num_attention_heads=4, num_key_value_heads=2,
                                                    head_dim=16, intermediate_size=128, vocab_size=100), 40)
    torch.manual_seed(0)
    draft = build_draft(config)
    embed = torch.nn.Embedding(100, 64)
    loss, stats = ttt_loss(draft, _fake_target(), embed, steps=3, decay=0.5)
    assert abs(float(loss) - sum(0.5 ** i * s.loss for i, s in enumerate(stats))) < 1e-4


CATALOG = sorted((PROJECT / "catalog").glob("*/*.toml"))


@pytest.mark.parametrize("path", CATALOG, ids=[p.stem for p in CATALOG])
def test_catalog_draft_builds_at_full_size_on_meta(path):
    recipe = load_recipe(path)
    base = BaseModelFacts.from_config(json.loads(recipe.resolve(recipe.model.config).read_text()))
    config = build_draft_config(recipe.draft.algorithm, recipe.draft.overrides, base, recipe.vocab.draft_vocab_size)
    with torch.device("meta"):
        draft = build_draft(config)
    layout = export_layout(config.algorithm, "flat")
    state = to_layout(draft.state_dict(), layout)
    if config.draft_vocab_size != config.vocab_size:
        state["d2t"] = torch.empty(config.draft_vocab_size, dtype=torch.int64, device="meta")
        state["t2d"] = torch.empty(config.vocab_size, dtype=torch.bool, device="meta")
    written = layout_config(config, layout, "bfloat16", recipe.model.path, 5)
    facts = config_facts(written)
    # everything the engine needs, plus the optional t2d we write beside d2t (never an embed_tokens copy)
    expected = {**required_tensors(layout, facts),
                **{k: v for k, v in optional_tensors(layout, facts).items() if k == "t2d"}}
    assert {k: tuple(v.shape) for k, v in state.items()} == {k: tuple(v[0]) for k, v in expected.items()}
    if layout == "dflash":  # vLLM's DFlash counts layer outputs: our aux id (a layer's input) minus one
        assert written["dflash_config"]["target_layer_ids"] == [i - 1 for i in config.aux_layer_ids]
    else:  # vLLM's numbering at the top level, SGLang's (one less) inside eagle_config: draft/engine_rules.py
        assert written["eagle_aux_hidden_state_layer_ids"] == list(config.aux_layer_ids)
        assert written["eagle_config"]["eagle_aux_hidden_state_layer_ids"] == [i - 1 for i in config.aux_layer_ids]
    assert written["num_attention_heads"] == base.num_attention_heads and written["vocab_size"] == base.vocab_size


def test_later_steps_on_a_subset_of_columns_give_the_same_loss_and_gradients():
    config = build_draft_config("eagle3", {}, facts(hidden_size=64, num_attention_heads=4, num_key_value_heads=2,
                                                    head_dim=16, intermediate_size=128, vocab_size=100), 40)
    target = _fake_target()
    target.loss_mask[:, :6] = 0  # a prompt: no loss on its tokens
    target.padding[1, 9:] = 0  # a shorter second sequence
    results = []
    for subset in (True, False):
        torch.manual_seed(0)
        draft = build_draft(config)
        loss, stats = ttt_loss(draft, target, torch.nn.Embedding(100, 64), steps=4, decay=0.8, subset=subset)
        loss.backward()
        results.append((loss.detach(), [s.correct for s in stats], [s.counted for s in stats],
                        {n: p.grad.clone() for n, p in draft.named_parameters()}))
    (loss_a, correct_a, counted_a, grads_a), (loss_b, correct_b, counted_b, grads_b) = results
    assert torch.allclose(loss_a, loss_b, atol=1e-5) and correct_a == correct_b and counted_a == counted_b
    for name in grads_a:
        assert torch.allclose(grads_a[name], grads_b[name], atol=1e-5), name
