"""Slow work names its cause: a training step measured far beyond what its arithmetic costs on this CPU is
reported with the slow phase and what to change; a step as expected says nothing."""

from __future__ import annotations

import torch

from eagle_recipes.training.step_cost import MachineRates, StepContext, diagnose, estimate_seconds, step_work

AVX2 = StepContext(optimizer="muon", features="cached", precision="float32", hardware="CPU AVX2, bfloat16 emulated",
                   native_bfloat16=False)


def quickstart_like_draft() -> torch.nn.Module:
    from eagle_recipes.draft.config import BaseModelFacts
    from eagle_recipes.draft.drafters import build_draft, build_draft_config

    facts = BaseModelFacts.from_config(dict(model_type="llama", num_hidden_layers=30, hidden_size=576,
                                            intermediate_size=1536, num_attention_heads=9, num_key_value_heads=3,
                                            vocab_size=49152, rms_norm_eps=1e-5, rope_theta=10000.0))
    with torch.device("meta"):
        return build_draft(build_draft_config("eagle3", {}, facts, 3434))


def test_the_step_estimate_counts_the_drafts_matmuls_and_muons_iterations():
    draft = quickstart_like_draft()
    adamw = step_work(draft, tokens=512, sequence_length=512, unroll=3, optimizer="adamw")
    muon = step_work(draft, tokens=512, sequence_length=512, unroll=3, optimizer="muon")
    matrices = sum(p.numel() for n, p in draft.named_parameters() if p.ndim == 2 and "embed" not in n)
    assert adamw.forward_flops >= 3 * 2 * matrices * 512 and adamw.backward_flops == 2 * adamw.forward_flops
    assert adamw.newton_schulz_flops == 0
    fc = 5 * (4 * 576 * 576 * 1728 + 2 * 576 ** 3)  # fc is 576 x 1728: one of Muon's matrices
    assert muon.newton_schulz_flops > fc
    rates = MachineRates(matmul_flops_per_s=60e9, bytes_per_s=10e9)
    assert estimate_seconds(muon, rates)["optimizer"] > estimate_seconds(adamw, rates)["optimizer"]


def test_muon_in_emulated_bfloat16_is_named_with_what_to_change():
    """The issue's own figures: 25.2 s a step on an AVX2 CPU, nearly all of it in Muon's bfloat16 iteration."""
    estimated = {"forward": 0.04, "backward": 0.08, "optimizer": 0.25}
    message = diagnose({"forward": 0.09, "backward": 0.16, "optimizer": 24.9}, estimated, AVX2)
    assert message is not None
    assert "the optimizer is 100x its estimate" in message and 'train.optimizer = "adamw"' in message
    assert "CPU AVX2, bfloat16 emulated" in message and "25.15 s" in message


def test_a_step_as_expected_or_merely_slowish_says_nothing():
    estimated = {"forward": 0.04, "backward": 0.08, "optimizer": 0.02}
    assert diagnose({"forward": 0.1, "backward": 0.2, "optimizer": 0.05}, estimated, AVX2) is None  # 2.5x
    assert diagnose({"forward": 0.01, "backward": 0.02, "optimizer": 0.3}, {p: 0.001 for p in estimated}, AVX2) is None  # < 0.5 s


def test_bfloat16_autocast_on_an_emulating_cpu_and_online_features_get_their_own_advice():
    estimated = {"forward": 0.05, "backward": 0.1, "optimizer": 0.01}
    bf16 = StepContext("adamw", "cached", "bfloat16", "CPU AVX2, bfloat16 emulated", False)
    assert 'train.precision = "float32"' in diagnose({"forward": 2.0, "backward": 4.0, "optimizer": 0.01}, estimated, bf16)
    online = StepContext("adamw", "online", "float32", "CPU AVX512, bfloat16 native", True)
    assert '"cached" runs it once' in diagnose({"forward": 3.0, "backward": 0.2, "optimizer": 0.01}, estimated, online)
