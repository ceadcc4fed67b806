"""Calibration on a real tokenizer with a chat template: d2t/t2d agree, the loss-masked count excludes user and
system tokens, results are deterministic across runs and shardings, and the seed's d2t.pt format round-trips."""

from __future__ import annotations

import json
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


def _write_shards(folder, sizes):
    files, start = [], 0
    for index, size in enumerate(sizes):
        path = folder / f"{index:03d}.jsonl"
        path.write_text("".join(json.dumps(c) + "\n" for c in CONVERSATIONS[start: start + size]))
        files.append(path)
        start += size
    return files


def test_counts_deterministic_across_shardings_and_masked(tmp_path, smollm2_path, ray_session):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    one = _write_shards(tmp_path / "a", [40])
    many = _write_shards(tmp_path / "b", [7, 13, 20])
    args = dict(model_path=smollm2_path, template_file="", vocab_size=49152, max_len=512, holdout_fraction=0.0)
    # the Ray Data path (large data) and the in-process path (small data) over different shardings
    first = count_tokens(one, count="assistant", batch_size=16, use_ray_data=True, **args)["train"]
    second = count_tokens(many, count="assistant", batch_size=5, use_ray_data=False, **args)["train"]
    third = count_tokens(many, count="assistant", batch_size=3, use_ray_data=True, **args)["train"]
    assert np.array_equal(first, second) and np.array_equal(first, third)
    everything = count_tokens(one, count="all", **args)["train"]
    tokenizer = load_tokenizer(smollm2_path)
    pirate = tokenizer(" pirate", add_special_tokens=False)["input_ids"]
    assert all(first[t] == 0 for t in pirate) and all(everything[t] > 0 for t in pirate)
    # the "all" count equals the seed's way: one apply_chat_template per conversation, then a Counter
    seed_counter = Counter()
    for conversation in CONVERSATIONS:
        seed_counter.update(tokenizer.apply_chat_template(conversation["conversations"], tokenize=True,
                                                          return_dict=True)["input_ids"])
    assert {t: int(everything[t]) for t in np.flatnonzero(everything)} == dict(seed_counter)
    d2t_first = mapping_from_ids(top_k_ids(first, 50), 49152).d2t
    d2t_second = mapping_from_ids(top_k_ids(second, 50), 49152).d2t
    assert torch.equal(d2t_first, d2t_second)


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


# Text that trips tokenizers up: whitespace runs before words, Unicode letters and numbers, control characters
# that some regex engines count as space, contractions, chat-template tokens inside content.
AWKWARD = ["  leading spaces", "tabs\t\tand\n\n\nnewlines  \n", "café naïve 東京 🚀 ½ ² ٣ Ωmega", "x\x1cy\x1d z\x85w",
           "it's they'll I'M We'Ve", "<|im_end|> inside <|im_start|>user", "trailing   ", "\n\nstarts with newlines",
           "1234567 7.5e10 -3", "", " ", "a\u00a0b\u2003c", "```python\n    def f(x):\n\treturn x  # ok\n```"]
AWKWARD_CONVERSATIONS = [
    [{"role": "system", "content": text}, {"role": "user", "content": text + " q"},
     {"role": "assistant", "content": text}, {"role": "user", "content": text},
     {"role": "assistant", "content": text + "end" + text}] for text in AWKWARD
] + [conversation["conversations"] for conversation in CONVERSATIONS]

LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                r"|\s*[\r\n]+|\s+(?!\S)|\s+")


def _tokenizer_variant(smollm2_path, folder, split_pattern: str | None, normalizer: bool = False) -> str:
    """SmolLM2's vocabulary with another pipeline in front: a Llama 3 / Qwen style Split expression, one that
    leaves text between its matches, or a normalizer (a pipeline piece-counting does not handle)."""
    from tokenizers import Regex, normalizers, pre_tokenizers

    tokenizer = load_tokenizer(smollm2_path)
    backend = tokenizer.backend_tokenizer
    if split_pattern is not None:
        backend.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(split_pattern), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    if normalizer:
        backend.normalizer = normalizers.NFKC()
    tokenizer.save_pretrained(folder)
    return str(folder)


@pytest.mark.parametrize("variant", ["smollm2", "llama3-split", "split-with-gaps", "normalizer"])
def test_piece_counting_equals_tokenizing(tmp_path, smollm2_path, variant):
    """The fast count (each distinct pre-token piece tokenized once) equals tokenizing every conversation, in both
    count modes, with and without truncation at max_len."""
    from eagle_recipes.data.pretokens import PreTokenizer
    from eagle_recipes.stages.calibrate import TokenCounter

    path = {"smollm2": lambda: smollm2_path,
            "llama3-split": lambda: _tokenizer_variant(smollm2_path, tmp_path, LLAMA3_SPLIT),
            "split-with-gaps": lambda: _tokenizer_variant(smollm2_path, tmp_path, r"\p{L}+"),
            "normalizer": lambda: _tokenizer_variant(smollm2_path, tmp_path, None, normalizer=True)}[variant]()
    assert (PreTokenizer.for_tokenizer(load_tokenizer(path)) is None) == (variant == "normalizer")
    for count in ("all", "assistant"):
        for max_len in (1 << 20, 48):
            fast = TokenCounter(path, "", 49152, count, max_len, 0.0, use_pieces=True)
            plain = TokenCounter(path, "", 49152, count, max_len, 0.0, use_pieces=False)
            expected = plain.count_conversations(AWKWARD_CONVERSATIONS)
            assert expected.sum() > 0
            assert np.array_equal(fast.count_conversations(AWKWARD_CONVERSATIONS), expected), (count, max_len)
