"""The tokenized training sequences on disk, in shards: what is saved is what is loaded, sequences are numbered
across shards in order, and loading maps the token arrays instead of reading them, so a capture actor's or a
training worker's memory does not grow with the data."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import numpy as np

from eagle_recipes.data.sequences import Sequences, has_shard, sequence_count, sequence_offsets
from eagle_recipes.run_folder import SEQUENCES_FOLDER


def some_sequences(count: int, seed: int = 0) -> Sequences:
    rng = np.random.default_rng(seed)
    lengths = rng.integers(1, 400, size=count)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    ids = rng.integers(0, 49152, size=int(offsets[-1])).astype(np.int32)
    mask = rng.integers(0, 2, size=int(offsets[-1])).astype(np.int8)
    return Sequences.from_arrays(ids, mask, offsets, pad_id=7)


def test_saved_sequences_load_back_equal_and_memory_mapped(tmp_path):
    saved = some_sequences(50)
    assert not has_shard(tmp_path, 0)
    saved.save(tmp_path)
    assert has_shard(tmp_path, 0) and sequence_count(tmp_path) == 50
    assert np.array_equal(sequence_offsets(tmp_path), saved.offsets)
    loaded = Sequences.load(tmp_path)
    assert loaded.pad_id == 7 and loaded.count == 50 and loaded.tokens == saved.tokens
    assert np.array_equal(loaded.offsets, saved.offsets)
    for name in ("ids", "mask", "offsets"):
        array, original = getattr(loaded.shards[0], name), getattr(saved.shards[0], name)
        assert isinstance(array, np.memmap) and not array.flags.writeable, name
        assert array.dtype == original.dtype and np.array_equal(array, original), name
    for index in (0, 17, 49):
        assert np.array_equal(loaded.ids_of(index), saved.ids_of(index))
        assert np.array_equal(loaded.mask_of(index), saved.mask_of(index))


def test_saving_again_replaces_the_whole_folder(tmp_path):
    some_sequences(30, seed=1).save(tmp_path)
    second = some_sequences(5, seed=2)
    second.save(tmp_path)
    loaded = Sequences.load(tmp_path)
    assert loaded.count == 5 and np.array_equal(loaded.ids_between(0, 5), second.ids_between(0, 5))
    assert [p.name for p in (tmp_path / SEQUENCES_FOLDER).iterdir()] == ["00000"]
    assert sorted(p.name for p in (tmp_path / SEQUENCES_FOLDER / "00000").iterdir()) == [
        "ids.npy", "mask.npy", "offsets.npy", "pad_id.npy"]
    assert [p.name for p in tmp_path.iterdir()] == [SEQUENCES_FOLDER]  # no temporary left beside it


def test_loading_does_not_read_the_tokens_into_memory(tmp_path):
    """~120 MB of sequences (25M tokens): loading them and reading 200 sequences grows the process's own memory
    (anonymous resident pages) by a few MB, where reading the arrays whole (what an .npz load did) grows it by their
    size. The mapped file's pages are the page cache's, shared by every process of the node that maps them (the
    kernel may map more of them than were read: on tmpfs, huge pages)."""
    sequences = some_sequences(125_000, seed=3)
    size_mb = (sequences.shards[0].ids.nbytes + sequences.shards[0].mask.nbytes) / 2**20
    assert size_mb > 100
    sequences.save(tmp_path)
    del sequences
    script = textwrap.dedent(f"""
        import numpy as np
        from eagle_recipes.data.sequences import Sequences

        def rss_mb():  # this process's private memory: what a worker adds to the node
            with open("/proc/self/status") as status:
                return next(int(line.split()[1]) for line in status if line.startswith("RssAnon")) / 1024

        before = rss_mb()
        loaded = Sequences.load({str(tmp_path)!r})
        touched = sum(int(loaded.ids_of(i).sum()) + int(loaded.mask_of(i).sum()) for i in range(0, 125_000, 625))
        mapped = rss_mb() - before
        whole = np.array(loaded.shards[0].ids), np.array(loaded.shards[0].mask)
        print(mapped, rss_mb() - before)
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    mapped_mb, whole_mb = map(float, result.stdout.split())
    assert whole_mb > 0.9 * size_mb  # the measurement can see the data being read
    assert mapped_mb < 16, f"loading and reading 200 sequences grew memory by {mapped_mb:.1f} MB of {size_mb:.0f} MB"


def test_tokenizing_as_the_conversations_stream_by_writes_the_same_files_as_tokenizing_them_whole(tmp_path,
                                                                                                   smollm2_path):
    """The stages tokenize from a stream (a generator over the conversation shards), writing tokens to disk as
    they come: the same bytes as tokenizing the whole list in memory, over more than one render chunk and with a
    conversation that has no label token (left out by both)."""
    from eagle_recipes.data.chat import load_tokenizer
    from eagle_recipes.data.sequences import RENDER_CHUNK, tokenize, write_shard

    tokenizer = load_tokenizer(smollm2_path)
    conversations = [[{"role": "user", "content": f"Question {i}: {'why ' * (i % 7)}?"},
                      {"role": "assistant", "content": f"Answer {i} é. " * (1 + i % 5)}]
                     for i in range(RENDER_CHUNK + 40)]
    conversations[5] = [{"role": "user", "content": "no answer here"}]
    whole, streamed = tmp_path / "whole", tmp_path / "streamed"
    tokenize(tokenizer, conversations, 64).save(whole)
    kept = write_shard(tokenizer, (c for c in conversations), 64, streamed, 0)
    assert kept == len(conversations) - 1 == sequence_count(streamed)
    names = sorted(p.name for p in (streamed / SEQUENCES_FOLDER / "00000").iterdir())
    assert names == ["ids.npy", "mask.npy", "offsets.npy", "pad_id.npy"]  # the raw files are gone
    for name in names:
        assert ((whole / SEQUENCES_FOLDER / "00000" / name).read_bytes()
                == (streamed / SEQUENCES_FOLDER / "00000" / name).read_bytes())
    assert write_shard(tokenizer, iter([]), 64, tmp_path / "none", 0) == 0 == sequence_count(tmp_path / "none")


def test_sequences_are_numbered_across_shards_in_order(tmp_path, smollm2_path):
    """Three shards written one by one (as the tokenize stage's actors write them, out of order) read back as one
    numbering equal to tokenizing every conversation at once: a shard with no sequence at all included."""
    from eagle_recipes.data.chat import load_tokenizer
    from eagle_recipes.data.sequences import tokenize, write_shard

    tokenizer = load_tokenizer(smollm2_path)
    conversations = [[{"role": "user", "content": f"Q{i}"}, {"role": "assistant", "content": "A " * (1 + i % 9)}]
                     for i in range(30)]
    parts = {2: conversations[12:], 0: conversations[:12], 1: []}
    for index, part in parts.items():
        write_shard(tokenizer, part, 64, tmp_path, index)
    whole = tokenize(tokenizer, conversations, 64)
    loaded = Sequences.load(tmp_path)
    assert [shard.count for shard in loaded.shards] == [12, 0, 18] and loaded.count == whole.count == 30
    assert np.array_equal(loaded.offsets, whole.offsets) and loaded.tokens == whole.tokens == sequence_offsets(tmp_path)[-1]
    for index in range(30):
        assert np.array_equal(loaded.ids_of(index), whole.ids_of(index))
        assert np.array_equal(loaded.mask_of(index), whole.mask_of(index))
    head = loaded.head(20)
    assert head.count == 20 and np.array_equal(head.ids_of(19), whole.ids_of(19)) and head.offsets[-1] == whole.offsets[20]
