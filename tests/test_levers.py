"""The training levers beyond plain EAGLE-3: LK losses, Muon, hidden-state noise, simulated acceptance while
training and keeping the best checkpoint; each against its definition or a run on the tiny target."""

from __future__ import annotations

import json

import pytest
import torch

from eagle_recipes.draft.losses import position_losses
from eagle_recipes.run_folder import SIMULATED_TAU_PLOT, TRAIN, RunFolder
from tests.helpers import override_recipe, run_stage, small_recipe


def test_lk_losses_follow_their_definitions():
    torch.manual_seed(0)
    logits, labels = torch.randn(3, 7, 11), torch.randn(3, 7, 11)
    p, q = torch.softmax(labels, -1), torch.softmax(logits, -1)
    alpha = torch.minimum(p, q).sum(-1)
    cross_entropy = -(p * torch.log_softmax(logits, -1)).sum(-1)
    torch.testing.assert_close(position_losses(logits, labels, "kl"), cross_entropy)
    torch.testing.assert_close(position_losses(logits, labels, "tv"), 1 - alpha)
    torch.testing.assert_close(position_losses(logits, labels, "nla"), -torch.log(alpha))
    weight = torch.exp(-3 * alpha)
    torch.testing.assert_close(position_losses(logits, labels, "lk_hybrid"), weight * cross_entropy + (1 - weight) * (1 - alpha))
    # a draft equal to the target: acceptance 1, so TV and -log alpha vanish
    assert float(position_losses(labels, labels, "tv").abs().max()) < 1e-6
    assert float(position_losses(labels, labels, "nla").abs().max()) < 1e-6
    with pytest.raises(ValueError, match="unknown loss"):
        position_losses(logits, labels, "l2")


def test_tv_gradient_raises_acceptance():
    torch.manual_seed(1)
    labels = torch.randn(5, 9)
    logits = torch.randn(5, 9, requires_grad=True)
    alpha = lambda z: torch.minimum(torch.softmax(labels, -1), torch.softmax(z, -1)).sum(-1).mean()  # noqa: E731
    before = float(alpha(logits))
    position_losses(logits, labels, "tv").mean().backward()
    with torch.no_grad():
        stepped = logits - 1.0 * logits.grad
    assert float(alpha(stepped)) > before


def test_muon_takes_the_matrices_and_adamw_the_rest_and_round_trips():
    from eagle_recipes.draft.config import BaseModelFacts
    from eagle_recipes.draft.drafters import build_draft, build_draft_config
    from eagle_recipes.training.optimizers import build_optimizer, muon_parameter, set_learning_rate

    facts = BaseModelFacts.from_config(dict(model_type="llama", num_hidden_layers=8, hidden_size=64,
                                            intermediate_size=128, num_attention_heads=4, num_key_value_heads=2,
                                            vocab_size=60, rms_norm_eps=1e-6, rope_theta=10000.0))
    draft = build_draft(build_draft_config("eagle3", {"fc_norm": True}, facts, 30))
    chosen = {n for n, p in draft.named_parameters() if muon_parameter(n, p)}
    assert "fc.weight" in chosen and "midlayer.self_attn.q_proj.weight" in chosen
    assert "lm_head.weight" not in chosen and not any("norm" in n for n in chosen)
    optimizer = build_optimizer(draft, "muon", lr=1e-3, weight_decay=0.0, muon_lr_scale=3.0)
    set_learning_rate(optimizer, 2e-3)
    assert sorted(g["lr"] for g in optimizer.param_groups) == pytest.approx([2e-3, 6e-3])
    before = draft.fc.weight.detach().clone()
    for parameter in draft.parameters():
        parameter.grad = torch.randn_like(parameter)
    optimizer.step()
    assert not torch.equal(draft.fc.weight, before)
    state = optimizer.state_dict()
    again = build_optimizer(draft, "muon", lr=1e-3, weight_decay=0.0, muon_lr_scale=3.0)
    again.load_state_dict(state)
    assert again.state_dict()["muon"]["state"].keys() == state["muon"]["state"].keys()


def test_feature_noise_is_uniform_bounded_and_the_same_on_a_resume():
    from eagle_recipes.draft.target_outputs import TargetOutputs
    from eagle_recipes.training.loop import with_feature_noise

    ones = torch.ones(1, 4)
    outputs = TargetOutputs(ones.long(), ones.long(), ones.long(), torch.zeros(1, 4, 3), ones.bool(),
                            torch.zeros(1, 4, 192))
    noisy = with_feature_noise(outputs, 0.05, seed=0, draw=7)
    assert 0.04 < float(noisy.hidden.abs().max()) <= 0.05 and abs(float(noisy.hidden.mean())) < 0.01
    assert torch.equal(noisy.hidden, with_feature_noise(outputs, 0.05, seed=0, draw=7).hidden)  # a resume: the same
    assert not torch.equal(noisy.hidden, with_feature_noise(outputs, 0.05, seed=0, draw=8).hidden)
    assert torch.equal(outputs.hidden, torch.zeros(1, 4, 192))  # the captured features themselves untouched


@pytest.mark.slow
@pytest.mark.parametrize("features", ["online", "cached"])
def test_simulated_tau_is_logged_and_the_best_checkpoint_kept(tmp_path, tiny_llama, ray_session, features):
    recipe = override_recipe(small_recipe(tmp_path, tiny_llama, steps=12, lr="0.003"),
                             f"train.features={features}", "train.simulate_every=4", "train.keep_best=true",
                             "data.holdout_fraction=0.2")  # a held-out split for the simulation to replay
    stages = ["synthesize", "tokenize", "calibrate"] + (["capture"] if features == "cached" else []) + ["train"]
    for stage in stages:
        result = run_stage(recipe, stage)
    run = RunFolder(tmp_path / "out")
    rows = [json.loads(line) for line in run.metrics.read_text().splitlines()]
    simulated = [(r["step"], r["simulated_tau"]) for r in rows if "simulated_tau" in r]
    assert [step for step, _ in simulated] == [4, 8, 12]
    assert all(1.0 <= tau <= 6.0 for _, tau in simulated)
    best_step, best_tau = max(simulated, key=lambda item: item[1])
    metrics = result["metrics"]
    assert metrics["best_simulated_tau"] == best_tau and metrics["best_simulated_step"] == best_step
    record = json.loads((run.checkpoints / "best" / "complete.json").read_text())
    assert record["step"] == best_step and record["tau"] == best_tau
    assert (run.stage(TRAIN) / SIMULATED_TAU_PLOT).stat().st_size > 1000
    from safetensors.torch import load_file

    kept = torch.load(run.checkpoints / "best" / "state.pt", weights_only=False)["draft"]
    trained = load_file(str(run.trained / "model.safetensors"))
    assert all(torch.equal(trained[name], tensor) for name, tensor in kept.items())  # the best, not the last
