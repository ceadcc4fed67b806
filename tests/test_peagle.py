"""P-EAGLE, the EAGLE-3 draft that proposes k tokens in one pass from mask slots.

The oracle: with a tiny random target and a random draft, the training unroll's step j at column t (which reads
the mask slot from step 1 on) equals the one pass vLLM runs after verified position t (draft/peagle.py's
`parallel_logits`: the verified inputs, then k - 1 mask slots, causal); it stops being equal when the unroll feeds
the chain instead of the mask slot, or another mask token. The export holds what vLLM's parallel drafting reads.
What every drafter must do (its objective trains, the simulation's acceptance equals the reference decoder's, the
export loads back as the same draft, validate bounds k, the graph trains it, vLLM serves it) is
tests/test_drafters.py's."""

from __future__ import annotations

import json

import pytest
import torch

from eagle_recipes.draft.model import Eagle3Draft
from eagle_recipes.draft.peagle import PEagleDraft, parallel_logits
from eagle_recipes.draft.ttt import ttt_loss, unroll
from eagle_recipes.training.target_source import target_outputs
from tests.test_ttt import SEQ, VOCAB, _draft, _tiny_target

STEPS = 4
MASK_TOKEN = 5


def _setup(**overrides):
    target = _tiny_target()
    draft, config = _draft(target, "peagle", 48, mask_token_id=MASK_TOKEN, **overrides)
    torch.manual_seed(2)
    ids = torch.randint(0, VOCAB, (1, SEQ))
    with torch.no_grad():
        outputs = target_outputs(target, ids, torch.ones_like(ids), torch.ones_like(ids), config.aux_layer_ids,
                                 torch.arange(48) * 2, "peagle")
    return target, draft, outputs


def _compare(target, draft, outputs) -> int:
    embed = target.get_input_embeddings()
    ids = outputs.input_ids
    with torch.no_grad():
        unrolled = [out.logits[0] for out in unroll(draft, outputs, embed, STEPS)]
        compared = 0
        for t in range(SEQ - 1):
            one_pass = parallel_logits(draft, embed, None, outputs.hidden[:, : t + 1], ids[0, 1: t + 2].tolist(),
                                       STEPS)
            for step in range(STEPS):
                scale = float(one_pass[step].abs().max())
                torch.testing.assert_close(unrolled[step][t], one_pass[step], atol=2e-5 * scale, rtol=1e-4,
                                           msg=lambda m: f"slot {step}, column {t}: {m}")
                compared += 1
    return compared


@pytest.mark.parametrize("overrides", [{}, {"num_hidden_layers": 2},
                                       {"norm_before_fc": True, "fc_norm": True, "qk_norm": True}],
                         ids=["one layer", "two layers", "EAGLE-3.1 norms and Qwen3 layer"])
def test_training_unroll_equals_the_one_pass_the_engine_runs(overrides):
    target, draft, outputs = _setup(**overrides)
    assert isinstance(draft, PEagleDraft) and draft.mask_hidden.shape == (1, 3 * 64)
    assert _compare(target, draft, outputs) == STEPS * (SEQ - 1)


@pytest.mark.parametrize("perturbation", ["mask slots read the chain", "another mask token"])
def test_the_oracle_fails_when_the_mask_slot_is_perturbed(monkeypatch, perturbation):
    target, draft, outputs = _setup()
    if perturbation == "mask slots read the chain":
        monkeypatch.setattr(PEagleDraft, "later_inputs", Eagle3Draft.later_inputs)
    else:
        real = PEagleDraft.later_inputs

        def shifted(self, embeds, hidden, embed):
            mask_embeds, mask_hidden = real(self, embeds, hidden, embed)
            return embed(torch.full(embeds.shape[:-1], MASK_TOKEN + 1)), mask_hidden

        monkeypatch.setattr(PEagleDraft, "later_inputs", shifted)
    with pytest.raises(AssertionError):
        _compare(target, draft, outputs)


def test_mask_hidden_learns_and_the_subset_unroll_changes_nothing():
    """The loss reaches mask_hidden (it is the mask slots' only input of their own); training later steps on the
    labelled columns only gives the full unroll's loss."""
    target, draft, outputs = _setup()
    draft.train()
    embed = target.get_input_embeddings()
    loss, stats = ttt_loss(draft, outputs, embed, STEPS, 0.8)
    full, _ = ttt_loss(draft, outputs, embed, STEPS, 0.8, subset=False)
    assert float(loss.detach()) == pytest.approx(float(full.detach()), rel=1e-5)
    loss.backward()
    assert len(stats) == STEPS and draft.mask_hidden.grad.abs().sum() > 0


def test_export_holds_what_parallel_drafting_reads(tmp_path):
    from safetensors.torch import load_file

    from eagle_recipes.draft.export import export_layout, serving_snippet, speculative_config, write_draft
    from eagle_recipes.draft.vocab import mapping_from_ids

    _, draft, _ = _setup()
    mapping = mapping_from_ids((torch.arange(48) * 2).tolist(), VOCAB)
    layout = export_layout("peagle", "speculators")  # P-EAGLE has one layout, whatever export.layout says
    report = write_draft(tmp_path / "draft", draft.state_dict(), draft.config, layout, "float32", "base", STEPS,
                         mapping.d2t, mapping.t2d)
    assert report.ok and report.layout == "peagle", report.lines()
    config = json.loads((tmp_path / "draft" / "config.json").read_text())
    assert config["ptd_token_id"] == MASK_TOKEN and config["architectures"] == ["LlamaForCausalLMEagle3"]
    tensors = load_file(str(tmp_path / "draft" / "model.safetensors"))
    assert tensors["mask_hidden"].shape == (1, 3 * 64)
    assert speculative_config("peagle") == {"method": "eagle3", "parallel_drafting": True}
    assert '"parallel_drafting": true' in serving_snippet("base", "draft", "peagle", STEPS, report.engines)
    assert report.engines == ["vllm"]  # SGLang has no P-EAGLE: its command is not offered
    assert "sglang" not in serving_snippet("base", "draft", "peagle", STEPS, report.engines)


def test_an_export_without_mask_hidden_is_reported(tmp_path):
    from safetensors.torch import load_file, save_file

    from eagle_recipes.draft.export import write_draft
    from eagle_recipes.draft.inspect import inspect_draft
    from eagle_recipes.draft.vocab import mapping_from_ids

    _, draft, _ = _setup()
    mapping = mapping_from_ids((torch.arange(48) * 2).tolist(), VOCAB)
    folder = tmp_path / "draft"
    write_draft(folder, draft.state_dict(), draft.config, "peagle", "float32", "base", STEPS, mapping.d2t, mapping.t2d)
    tensors = load_file(str(folder / "model.safetensors"))
    del tensors["mask_hidden"]
    save_file(tensors, str(folder / "model.safetensors"))
    report = inspect_draft(folder)
    assert not report.ok and any("mask_hidden" in line for line in report.lines()), report.lines()
