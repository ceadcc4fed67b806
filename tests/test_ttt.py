"""The training-time-test unroll trains exactly what the engine runs.

The oracle: with a tiny random target and a random draft, the logits of unroll step j at column t equal the logits
of the chain-drafting reference decoder (draft/reference.py, which runs the draft as vLLM does) for the same
prefix and the same drafted tokens. Positions whose target top token lies outside the draft vocabulary carry no
loss but count in accuracy. The draft's rotary frequencies follow its config."""

from __future__ import annotations

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from eagle_recipes.draft.config import BaseModelFacts
from eagle_recipes.draft.drafters import build_draft, build_draft_config
from eagle_recipes.draft.model import _rotary
from eagle_recipes.draft.chain import draft_chain
from eagle_recipes.draft.target import target_features
from eagle_recipes.draft.target_outputs import TargetOutputs
from eagle_recipes.draft.ttt import ttt_loss, unroll
from eagle_recipes.training.target_source import target_outputs

VOCAB, HIDDEN, LAYERS, SEQ = 96, 64, 8, 14


def _tiny_target() -> LlamaForCausalLM:
    config = LlamaConfig(vocab_size=VOCAB, hidden_size=HIDDEN, intermediate_size=128, num_hidden_layers=LAYERS,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                         rope_theta=10000.0, tie_word_embeddings=False)
    torch.manual_seed(0)
    return LlamaForCausalLM(config).eval()


def _draft(target, algorithm: str, draft_vocab: int, **overrides):
    facts = BaseModelFacts.from_config(target.config.to_dict())
    config = build_draft_config(algorithm, {"intermediate_size": 96, **overrides}, facts, draft_vocab)
    torch.manual_seed(1)
    draft = build_draft(config).eval()
    with torch.no_grad():  # larger than the default init, so every position's rotation shows in the logits
        for parameter in draft.parameters():
            if parameter.dim() == 2:
                parameter.normal_(0, 0.3)
            elif overrides:  # the variants' norms must matter: weights away from 1
                parameter.normal_(1.0, 0.3)
    return draft, config


# EAGLE-3.1 switches and the Qwen3-style layer: each trained exactly as the engine serves it
VARIANTS = {"fc_norm": {"fc_norm": True}, "norm_before_fc": {"norm_before_fc": True},
            "norm_output": {"norm_output": True}, "qk_norm": {"qk_norm": True},
            "all": {"fc_norm": True, "norm_before_fc": True, "norm_output": True, "qk_norm": True,
                    "norm_before_residual": True}}


@pytest.mark.parametrize("algorithm,layers,variant", [("eagle3", 1, ""), ("eagle3", 2, ""), ("eagle1", 1, ""),
                                                      *[("eagle3", 2, name) for name in VARIANTS]])
def test_unroll_logits_equal_the_chain_drafting_reference(algorithm, layers, variant):
    target = _tiny_target()
    draft_vocab = VOCAB if algorithm == "eagle1" else 48
    draft, config = _draft(target, algorithm, draft_vocab, num_hidden_layers=layers, **VARIANTS.get(variant, {}))
    draft_ids = torch.arange(draft_vocab) * (VOCAB // draft_vocab)
    torch.manual_seed(2)
    ids = torch.randint(0, VOCAB, (1, SEQ))
    steps = 4
    with torch.no_grad():
        outputs = target_outputs(target, ids, torch.ones_like(ids), torch.ones_like(ids), config.aux_layer_ids,
                                 draft_ids, algorithm)
        lm_head = target.get_output_embeddings()
        unrolled = [out.logits[0] for out in unroll(draft, outputs, target.get_input_embeddings(), steps, lm_head)]
        compared = 0
        for t in range(SEQ - 2):
            prefix_features = outputs.hidden[:, : t + 1]  # causal: the prefix's own forward gives the same
            tokens_in = ids[0, 1: t + 2].tolist()
            forced = ids[0, t + 2: t + 1 + steps].tolist()
            chain = min(steps, len(forced) + 1)
            _, reference = draft_chain(draft, target.get_input_embeddings(), lm_head, prefix_features,
                                       tokens_in, chain, forced=forced)
            for step in range(chain):
                scale = float(reference[step].abs().max())  # fp32 rounding grows with the logits' size
                torch.testing.assert_close(unrolled[step][t], reference[step], atol=2e-5 * scale, rtol=1e-4,
                                           msg=lambda m: f"step {step}, column {t}: {m}")
                compared += 1
    assert compared > 3 * (SEQ - 5)


def test_prefix_features_equal_full_sequence_features():
    """The oracle slices one forward's features by prefix: true because the target is causal."""
    target = _tiny_target()
    ids = torch.randint(0, VOCAB, (1, SEQ))
    with torch.no_grad():
        full = target(input_ids=ids, output_hidden_states=True).hidden_states
        prefix = target(input_ids=ids[:, :6], output_hidden_states=True).hidden_states
    torch.testing.assert_close(target_features(full, "eagle3", (2, 4, 5))[:, :6],
                               target_features(prefix, "eagle3", (2, 4, 5)), atol=1e-5, rtol=1e-5)


def _outputs(seq=16, vocab=60, draft_vocab=30, hidden=64, out_of_draft=()):
    torch.manual_seed(3)
    outputs = TargetOutputs(input_ids=torch.randint(0, vocab, (1, seq)),
                            loss_mask=torch.ones(1, seq, dtype=torch.long), padding=torch.ones(1, seq, dtype=torch.long),
                            draft_logits=torch.randn(1, seq, draft_vocab),
                            top_in_draft=torch.ones(1, seq, dtype=torch.bool),
                            hidden=torch.randn(1, seq, 3 * hidden))
    outputs.top_in_draft[0, list(out_of_draft)] = False
    return outputs


def _small_eagle3(draft_vocab=30):
    facts = BaseModelFacts.from_config(dict(model_type="llama", num_hidden_layers=8, hidden_size=64,
                                            intermediate_size=128, num_attention_heads=4, num_key_value_heads=2,
                                            vocab_size=60, rms_norm_eps=1e-6, rope_theta=10000.0))
    torch.manual_seed(0)
    return build_draft(build_draft_config("eagle3", {}, facts, draft_vocab))


def test_out_of_draft_positions_carry_no_loss_but_count_in_accuracy():
    draft, embed = _small_eagle3(), torch.nn.Embedding(60, 64)
    outside = (4, 9)
    base = _outputs(out_of_draft=outside)
    loss, stats = ttt_loss(draft, base, embed, steps=3, decay=0.8)
    # every label column counts, in the draft vocabulary or not: step 0 has SEQ - 2 of them
    assert [s.counted for s in stats] == [14, 13, 12]
    # the labels at out-of-draft positions do not reach the loss (step j reads position t + j + 1)
    changed = _outputs(out_of_draft=outside)
    changed.draft_logits[0, list(outside)] = torch.randn(len(outside), 30) * 10
    assert torch.allclose(ttt_loss(draft, changed, embed, steps=3, decay=0.8)[0], loss)
    # ...and a draft that agrees with the target there is still not counted correct
    agreeing = _outputs(out_of_draft=outside)
    with torch.no_grad():
        step0 = next(unroll(draft, agreeing, embed, 1)).logits
    agreeing.draft_logits = torch.zeros_like(agreeing.draft_logits)
    agreeing.draft_logits[0, 1:, :] = step0[0, :-1]  # label of column t is read at t + 1
    _, stats_agreeing = ttt_loss(draft, agreeing, embed, steps=1, decay=1.0)
    outside_columns = [p - 1 for p in outside]  # columns whose label sits at an out-of-draft position
    assert stats_agreeing[0].correct == stats_agreeing[0].counted - len(outside_columns)


def test_target_outputs_flag_top_tokens_outside_the_draft_vocabulary():
    target = _tiny_target()
    draft_ids = torch.arange(0, VOCAB, 3)
    ids = torch.randint(0, VOCAB, (2, SEQ))
    outputs = target_outputs(target, ids, torch.ones_like(ids), torch.ones_like(ids), (2, 4, 5), draft_ids, "eagle3")
    with torch.no_grad():
        full = target(input_ids=ids).logits
    expected = (full.argmax(-1) % 3) == 0
    assert torch.equal(outputs.top_in_draft, expected) and 0 < int(expected.sum()) < expected.numel()
    torch.testing.assert_close(outputs.draft_logits, full[..., draft_ids])


@pytest.mark.parametrize("theta,scaling,divisor", [(500.0, None, 1.0), (1_000_000.0, None, 1.0),
                                                    (500.0, {"rope_type": "linear", "factor": 4.0}, 4.0)])
def test_draft_rotary_frequencies_follow_the_config(theta, scaling, divisor):
    facts = BaseModelFacts.from_config(dict(model_type="llama", num_hidden_layers=8, hidden_size=64,
                                            intermediate_size=128, num_attention_heads=4, num_key_value_heads=2,
                                            vocab_size=60, rms_norm_eps=1e-6, rope_theta=theta, rope_scaling=scaling))
    config = build_draft_config("eagle3", {}, facts, 30)
    head_dim = config.head_dim
    expected = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim)) / divisor
    torch.testing.assert_close(_rotary(config).inv_freq.double(), expected, rtol=1e-5, atol=0)

