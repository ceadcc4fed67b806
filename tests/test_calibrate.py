"""Calibration on a real tokenizer with a chat template: d2t/t2d agree, the loss-masked count excludes user and
system tokens, counts from the sequence shards are deterministic across shardings and equal the seed's counter, and
the seed's d2t.pt format round-trips."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
import torch

from eagle_recipes.data.chat import load_tokenizer, render_batch
from eagle_recipes.draft.vocab import VocabError, load_d2t, mapping_from_ids, top_k_ids
from eagle_recipes.run_folder import D2T_FILE
from eagle_recipes.stages.calibrate import count_tokens

CONVERSATIONS = [
    {"conversation_id": f"c{i}", "conversations": [
        {"role": "system", "content": "You are a pirate."},
        {"role": "user", "content": f"Tell me about ships number {i}."},
        {"role": "assistant", "content": f"Arr, ship {i} sails the sea with {i * 3} sails!"},
        {"role": "user", "content": "And then?"},
        {"role": "assistant", "content": "Then we find treasure."}]}
    for i in range(40)
]


def test_assistant_mask_covers_exactly_the_replies(smollm2_path):
    tokenizer = load_tokenizer(smollm2_path)
    rendered = render_batch(tokenizer, [CONVERSATIONS[0]["conversations"]])[0]
    masked = tokenizer.decode([t for t, m in zip(rendered.input_ids, rendered.loss_mask) if m])
    assert masked == "Arr, ship 0 sails the sea with 0 sails!<|im_end|>Then we find treasure.<|im_end|>"
    unmasked = tokenizer.decode([t for t, m in zip(rendered.input_ids, rendered.loss_mask) if not m])
    assert "pirate" in unmasked and "Tell me about ships" in unmasked and "And then?" in unmasked


def _tokenized(folder, tokenizer, sizes, max_len=512):
    """The conversations as sequence shards of these sizes (as the tokenize stage writes them)."""
    from eagle_recipes.data.sequences import write_shard

    start = 0
    for index, size in enumerate(sizes):
        write_shard(tokenizer, [c["conversations"] for c in CONVERSATIONS[start: start + size]], max_len, folder,
                    index)
        start += size
    return folder


def test_counts_from_the_sequence_shards_are_deterministic_across_shardings_and_masked(tmp_path, smollm2_path):
    """Calibrate counts the tokenize stage's shards: the same counts over any sharding, only label tokens by
    default, and with count = "all" exactly the seed's counter (one apply_chat_template per conversation)."""
    tokenizer = load_tokenizer(smollm2_path)
    one = _tokenized(tmp_path / "a", tokenizer, [40])
    many = _tokenized(tmp_path / "b", tokenizer, [7, 13, 20])
    first = count_tokens(one, 49152, "assistant")
    assert np.array_equal(first, count_tokens(many, 49152, "assistant")) and first.sum() > 0
    everything = count_tokens(many, 49152, "all")
    pirate = tokenizer(" pirate", add_special_tokens=False)["input_ids"]
    assert all(first[t] == 0 for t in pirate) and all(everything[t] > 0 for t in pirate)
    seed_counter = Counter()
    for conversation in CONVERSATIONS:
        seed_counter.update(tokenizer.apply_chat_template(conversation["conversations"], tokenize=True,
                                                          return_dict=True)["input_ids"])
    assert {t: int(everything[t]) for t in np.flatnonzero(everything)} == dict(seed_counter)
    # the label tokens are those of each assistant reply and its end-of-turn token, nothing else
    masked = Counter()
    for rendered in render_batch(tokenizer, [c["conversations"] for c in CONVERSATIONS], 512):
        masked.update(t for t, m in zip(rendered.input_ids, rendered.loss_mask) if m)
    assert {t: int(first[t]) for t in np.flatnonzero(first)} == dict(masked)
    # truncated at max_seq_len: only what training sees is counted
    from eagle_recipes.data.sequences import Sequences

    cut = Sequences.load(_tokenized(tmp_path / "c", tokenizer, [40], max_len=48))
    assert cut.count == 40 and all(len(cut.ids_of(i)) <= 48 for i in range(40))
    assert count_tokens(tmp_path / "c", 49152, "all").sum() == cut.tokens < everything.sum()


def test_d2t_and_t2d_agree():
    counts = np.zeros(1000, dtype=np.int64)
    counts[[5, 9, 100, 3, 999]] = [10, 10, 7, 1, 50]
    mapping = mapping_from_ids(top_k_ids(counts, 4), 1000)
    assert mapping.d2t.dtype == torch.int64 and mapping.t2d.dtype == torch.bool
    assert mapping.t2d.sum() == 4 == mapping.draft_vocab_size
    for i in range(4):
        assert mapping.t2d[i + mapping.d2t[i]]
    assert mapping.target_ids.tolist() == [5, 9, 100, 999]  # ties (5, 9) by id; 3 dropped (lowest count)


def test_top_k_breaks_ties_by_id():
    counts = np.array([0, 5, 5, 5, 1])
    assert top_k_ids(counts, 2).tolist() == [1, 2]


def test_seed_format_d2t_round_trips(tmp_path):
    # The seed writes d2t in descending-frequency order: target ids 40, 3, 17 -> offsets id - i
    seed_targets = torch.tensor([40, 3, 17])
    torch.save(seed_targets - torch.arange(3), tmp_path / D2T_FILE)
    mapping = load_d2t(tmp_path / D2T_FILE, vocab_size=64)
    assert sorted(mapping.target_ids.tolist()) == [3, 17, 40]
    assert int(mapping.t2d.sum()) == 3
    torch.save(mapping.d2t, tmp_path / "ours.pt")
    assert torch.equal(load_d2t(tmp_path / "ours.pt", 64).d2t, mapping.d2t)


@pytest.mark.parametrize("tensor,words", [
    (torch.tensor([0, 0, 70]), "outside 0..63"),
    (torch.arange(100) * 0, "100 draft tokens but the base vocabulary has only 64"),
    (torch.tensor([1, 0, -1]), "same target id"),
    (torch.tensor([[1, 2]]), "1-D integer tensor"),
])
def test_bad_d2t_rejected_with_a_clear_error(tmp_path, tensor, words):
    torch.save(tensor, tmp_path / D2T_FILE)
    with pytest.raises(VocabError, match=words):
        load_d2t(tmp_path / D2T_FILE, vocab_size=64)
