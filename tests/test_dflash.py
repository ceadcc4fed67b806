"""DFlash, the one-pass block drafter: the training forward (every anchor of a sequence at once, each block seeing
the context before its anchor) equals drafting one block at a time over the context cut at the anchor, as the
engine and the reference decoder draft, and stops being equal when the block's visibility or positions are
perturbed; each draw of its objective samples its own anchors. What every drafter must do (its objective trains,
the simulation's acceptance equals the reference decoder's, the export loads back, the graph trains it, vLLM serves
it) is tests/test_drafters.py's."""

from __future__ import annotations

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from eagle_recipes.draft import dflash
from eagle_recipes.draft.config import BaseModelFacts
from eagle_recipes.draft.drafters import build_draft, build_draft_config
from eagle_recipes.training.target_source import target_outputs

VOCAB, HIDDEN, SEQ, BLOCK = 96, 64, 14, 5


def _setup():
    config = LlamaConfig(vocab_size=VOCAB, hidden_size=HIDDEN, intermediate_size=128, num_hidden_layers=8,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                         rope_theta=10000.0, tie_word_embeddings=False)
    torch.manual_seed(0)
    target = LlamaForCausalLM(config).eval()
    facts = BaseModelFacts.from_config(target.config.to_dict())
    draft_config = build_draft_config("dflash", {"intermediate_size": 96, "block_size": BLOCK, "mask_token_id": 7},
                                      facts, 48)
    torch.manual_seed(1)
    draft = build_draft(draft_config).eval()
    with torch.no_grad():
        for parameter in draft.parameters():
            parameter.normal_(1.0 if parameter.dim() == 1 else 0.0, 0.3)
    torch.manual_seed(2)
    ids = torch.randint(0, VOCAB, (1, SEQ))
    draft_ids = torch.arange(48) * 2
    outputs = target_outputs(target, ids, torch.ones_like(ids), torch.ones_like(ids), draft_config.aux_layer_ids,
                             draft_ids, "dflash")
    return target, draft, outputs


def _one_block_at_a_time(draft, outputs, embed, anchor: int) -> torch.Tensor:
    """The block at `anchor` as the engine drafts it: the context cut at the anchor, positions anchor.. ."""
    ids = outputs.input_ids[0]
    tokens = torch.tensor([[int(ids[anchor])] + [draft.config.mask_token_id] * (BLOCK - 1)])
    context = draft.context(outputs.hidden[0, :anchor])
    return draft.block_forward(context, embed(tokens), torch.arange(anchor, anchor + BLOCK)[None],
                               torch.ones(1, anchor, dtype=torch.bool))[0]


def _compare(draft, outputs, embed) -> None:
    anchors = torch.arange(0, SEQ - 1)
    with torch.no_grad():
        batched = dflash.blocks_at(draft, outputs.hidden[0], outputs.input_ids[0], anchors, embed)
        for index, anchor in enumerate(anchors.tolist()):
            reference = _one_block_at_a_time(draft, outputs, embed, anchor)
            scale = float(reference.abs().max())
            torch.testing.assert_close(batched[index], reference, atol=2e-5 * scale, rtol=1e-4,
                                       msg=lambda m: f"anchor {anchor}: {m}")


def test_training_blocks_equal_drafting_one_block_at_a_time():
    target, draft, outputs = _setup()
    _compare(draft, outputs, target.get_input_embeddings())


def test_training_blocks_run_under_bfloat16_autocast_as_on_a_gpu():
    """The GPU path (bfloat16 autocast over float32 weights) on a CPU twin: the masked context scores once filled
    with float32's minimum, which bfloat16 cannot hold, and the H200 check stopped there."""
    target, draft, outputs = _setup()
    embed = target.get_input_embeddings()
    anchors = torch.arange(0, SEQ - 1)
    with torch.no_grad():
        full = dflash.blocks_at(draft, outputs.hidden[0], outputs.input_ids[0], anchors, embed)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            half = dflash.blocks_at(draft, outputs.hidden[0], outputs.input_ids[0], anchors, embed)
    assert half.dtype == torch.bfloat16
    agreement = (half.float().argmax(-1) == full.argmax(-1)).float().mean()
    assert agreement > 0.9, agreement


@pytest.mark.parametrize("perturbation", ["context visible at the anchor", "block shifted one position"])
def test_the_oracle_fails_when_the_block_mask_or_positions_are_perturbed(monkeypatch, perturbation):
    target, draft, outputs = _setup()
    if perturbation == "context visible at the anchor":
        monkeypatch.setattr(dflash, "context_visibility",
                            lambda anchors, length: torch.arange(length)[None] <= anchors[:, None])
    else:
        monkeypatch.setattr(dflash, "anchor_blocks",
                            lambda anchors, size: anchors[:, None] + 1 + torch.arange(size)[None])
    with pytest.raises(AssertionError):
        _compare(draft, outputs, target.get_input_embeddings())


def test_each_draw_samples_its_own_anchors():
    target, draft, outputs = _setup()
    draft.train()
    objective = dflash.DFlashObjective(draft, anchors_per_sequence=6, gamma=4.0, loss_kind="kl", seed=0)
    loss, stats = objective(outputs, target.get_input_embeddings(), None, 0)
    other, _ = objective(outputs, target.get_input_embeddings(), None, 1)
    assert float(other) != float(loss)
