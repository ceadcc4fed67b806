"""The training sequences: every conversation of a split rendered with the chat template, tokenized once, stored
in fixed shards of flat arrays (the `tokenized/` folder) and indexed by sequence. Calibrate counts from them, capture
and training read them, so all see the same sequences in the same order, and cached features line up with them
token for token.

`tokenized/NNNNN/`, one folder per shard (the sequences of shard k of the conversations, in order; the tokenize
stage writes each whole or not at all, so a killed run resumes by shard): `ids.npy` int32 [N tokens], `mask.npy`
int8 [N] (1 where a token is an assistant label), `offsets.npy` int64 [count + 1] (sequence i of the shard is
ids[offsets[i]:offsets[i+1]]), `pad_id.npy`. Plain .npy files are read memory-mapped: a capture actor or a
training worker maps them instead of reading every token into its own memory (750M tokens are ~3.75 GB), only the
pages of the sequences it reads come in, and the processes of one node share them through the page cache. What
a reader holds in memory is an offset per sequence.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np

from eagle_recipes.atomic import atomic_path
from eagle_recipes.run_folder import SEQUENCES_FOLDER

RENDER_CHUNK = 256  # conversations rendered per call
ARRAYS = ("ids", "mask", "offsets")
# in the fingerprint of every stage that writes or reads sequences: a run folder of another layout is written again
SEQUENCES_LAYOUT = "npy-shards"


@dataclass
class SequenceShard:
    """One shard's arrays (memory-mapped when loaded); `offsets` are the shard's own, from 0."""

    ids: np.ndarray
    mask: np.ndarray
    offsets: np.ndarray

    @property
    def count(self) -> int:
        return int(self.offsets.shape[0] - 1)


class Sequences:
    """Every sequence of a split, over its shards, indexed by one sequence number."""

    def __init__(self, shards: list[SequenceShard], pad_id: int = 0, limit: int | None = None):
        self.shards, self.pad_id = shards, pad_id
        counts = np.array([shard.count for shard in shards], dtype=np.int64)
        self.firsts = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)  # first sequence of each shard
        sizes = np.array([int(shard.offsets[-1]) for shard in shards], dtype=np.int64)
        self.token_starts = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
        total = int(self.firsts[-1])
        self._count = total if limit is None else min(limit, total)
        self._offsets: np.ndarray | None = None

    @classmethod
    def from_arrays(cls, ids: np.ndarray, mask: np.ndarray, offsets: np.ndarray, pad_id: int = 0) -> "Sequences":
        """Sequences held in memory, as one shard."""
        return cls([SequenceShard(ids, mask, offsets)], pad_id)

    @classmethod
    def load(cls, folder: Path) -> "Sequences":
        """The sequences in `folder`, memory-mapped (read-only: nothing is read until a sequence is asked for)."""
        stored = shard_folders(folder)
        shards = [SequenceShard(*(np.load(path / f"{name}.npy", mmap_mode="r") for name in ARRAYS))
                  for path in stored]
        pad_id = int(np.load(stored[0] / WHOLE_MARK)) if stored else 0
        return cls(shards, pad_id)

    @property
    def count(self) -> int:
        return self._count

    @property
    def offsets(self) -> np.ndarray:
        """[count + 1] token offsets over all shards (built once, when first asked: one int64 per sequence)."""
        if self._offsets is None:
            parts = [shard.offsets[:-1] + start for shard, start in zip(self.shards, self.token_starts)]
            self._offsets = np.concatenate([*parts, [self.token_starts[-1]]]).astype(np.int64)[: self._count + 1]
        return self._offsets

    @property
    def tokens(self) -> int:
        if self._count == int(self.firsts[-1]):
            return int(self.token_starts[-1])
        return int(self.offsets[-1])

    def head(self, count: int) -> "Sequences":
        """The first `count` sequences (all of them when there are fewer), still memory-mapped."""
        return Sequences(self.shards, self.pad_id, min(count, self._count))

    def _locate(self, index: int) -> tuple[SequenceShard, int, int]:
        if not 0 <= index < self._count:
            raise IndexError(f"sequence {index} of {self._count}")
        shard = int(np.searchsorted(self.firsts, index, side="right")) - 1
        local = index - int(self.firsts[shard])
        offsets = self.shards[shard].offsets
        return self.shards[shard], int(offsets[local]), int(offsets[local + 1])

    def ids_of(self, index: int) -> np.ndarray:
        shard, start, end = self._locate(index)
        return shard.ids[start:end]

    def mask_of(self, index: int) -> np.ndarray:
        shard, start, end = self._locate(index)
        return shard.mask[start:end]

    def ids_between(self, first: int, last: int) -> np.ndarray:
        """The token ids of sequences [first, last), back to back."""
        parts = [self.ids_of(index) for index in range(first, last)]
        return np.concatenate(parts).astype(np.int32) if parts else np.zeros(0, np.int32)

    def save(self, folder: Path) -> None:
        """All sequences as one shard, atomically: a reader sees the whole folder or none of it."""
        ids = np.concatenate([self.ids_of(i) for i in range(self.count)]) if self.count else np.zeros(0, np.int32)
        mask = np.concatenate([self.mask_of(i) for i in range(self.count)]) if self.count else np.zeros(0, np.int8)
        with atomic_path(Path(folder) / SEQUENCES_FOLDER) as tmp:
            tmp.mkdir()
            _save_shard(tmp / shard_name(0), ids.astype(np.int32), mask.astype(np.int8), self.offsets, self.pad_id)


def shard_name(index: int) -> str:
    return f"{index:05d}"


WHOLE_MARK = "pad_id.npy"  # a shard's last file: a shard folder that has it is whole


def shard_folders(folder: Path) -> list[Path]:
    """The whole shards in `folder`'s tokenized/, in order."""
    stored = Path(folder) / SEQUENCES_FOLDER
    return sorted(path for path in stored.glob("[0-9]" * 5) if (path / WHOLE_MARK).exists()) if stored.exists() else []


def has_shard(folder: Path, index: int) -> bool:
    """Whether shard `index` of `folder`'s sequences is there, whole."""
    return (Path(folder) / SEQUENCES_FOLDER / shard_name(index) / WHOLE_MARK).exists()


def _save_shard(target: Path, ids: np.ndarray, mask: np.ndarray, offsets: np.ndarray, pad_id: int) -> None:
    target.mkdir()
    for name, array in (("ids", ids), ("mask", mask), ("offsets", offsets)):
        np.save(target / f"{name}.npy", np.ascontiguousarray(array))
    np.save(target / WHOLE_MARK, np.int64(pad_id))  # written last: a shard with it is whole


def sequence_offsets(folder: Path) -> np.ndarray:
    """The token offsets over all shards, [count + 1] (only the offsets files are read)."""
    shards = [np.load(path / "offsets.npy", mmap_mode="r") for path in shard_folders(folder)]
    starts = np.cumsum([0] + [int(offsets[-1]) for offsets in shards])
    return np.concatenate([*(offsets[:-1] + start for offsets, start in zip(shards, starts)),
                           [starts[-1]]]).astype(np.int64)


def sequence_count(folder: Path) -> int:
    return sum(int(np.load(path / "offsets.npy", mmap_mode="r").shape[0]) - 1 for path in shard_folders(folder))


def sequence_tokens(folder: Path) -> int:
    return sum(int(np.load(path / "offsets.npy", mmap_mode="r")[-1]) for path in shard_folders(folder))


def rendered_chunks(tokenizer, conversations: Iterable[list[dict]], max_seq_len: int) -> Iterator[list]:
    """Conversations rendered and tokenized RENDER_CHUNK at a time, those with no label token left out."""
    from eagle_recipes.data.chat import render_batch

    chunk: list[list[dict]] = []
    for conversation in conversations:
        chunk.append(conversation)
        if len(chunk) == RENDER_CHUNK:
            yield [r for r in render_batch(tokenizer, chunk, max_seq_len) if sum(r.loss_mask)]
            chunk = []
    if chunk:
        yield [r for r in render_batch(tokenizer, chunk, max_seq_len) if sum(r.loss_mask)]


def tokenize(tokenizer, conversations: list[list[dict]], max_seq_len: int) -> Sequences:
    """Render and tokenize conversations (chat messages) in memory; those with no label token are left out."""
    rendered = [r for chunk in rendered_chunks(tokenizer, conversations, max_seq_len) for r in chunk]
    lengths = np.array([len(r.input_ids) for r in rendered], dtype=np.int64)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    ids = np.concatenate([r.input_ids for r in rendered]).astype(np.int32) if rendered else np.zeros(0, np.int32)
    mask = np.concatenate([r.loss_mask for r in rendered]).astype(np.int8) if rendered else np.zeros(0, np.int8)
    return Sequences.from_arrays(ids, mask, offsets, int(tokenizer.pad_token_id or 0))


def write_shard(tokenizer, conversations: Iterable[list[dict]], max_seq_len: int, folder: Path, index: int) -> int:
    """Render and tokenize conversations into shard `index` of `folder`'s sequences as they stream by, atomically;
    returns how many were kept. Memory holds one chunk of conversations and a length per sequence, not every
    token: the tokens go to disk as they are made."""
    lengths: list[int] = []
    (Path(folder) / SEQUENCES_FOLDER).mkdir(parents=True, exist_ok=True)
    with atomic_path(Path(folder) / SEQUENCES_FOLDER / shard_name(index)) as tmp:
        tmp.mkdir()
        raw = {name: tmp / f"{name}.raw" for name in ("ids", "mask")}
        with open(raw["ids"], "wb") as ids_file, open(raw["mask"], "wb") as mask_file:
            for chunk in rendered_chunks(tokenizer, conversations, max_seq_len):
                for rendered in chunk:
                    ids_file.write(np.asarray(rendered.input_ids, dtype=np.int32).tobytes())
                    mask_file.write(np.asarray(rendered.loss_mask, dtype=np.int8).tobytes())
                    lengths.append(len(rendered.input_ids))
        for name, dtype in (("ids", np.int32), ("mask", np.int8)):
            _raw_to_npy(raw[name], tmp / f"{name}.npy", np.dtype(dtype))
        np.save(tmp / "offsets.npy", np.concatenate([[0], np.cumsum(lengths, dtype=np.int64)]).astype(np.int64))
        np.save(tmp / WHOLE_MARK, np.int64(tokenizer.pad_token_id or 0))
    return len(lengths)


def _raw_to_npy(raw: Path, target: Path, dtype: np.dtype) -> None:
    """A file of raw values as a .npy file, copied through a memory map (never read whole), the raw one removed."""
    count = raw.stat().st_size // dtype.itemsize
    if count == 0:
        np.save(target, np.zeros(0, dtype))
    else:
        stored = np.lib.format.open_memmap(target, mode="w+", dtype=dtype, shape=(count,))
        stored[:] = np.memmap(raw, dtype=dtype, mode="r")
        stored.flush()
        del stored
    raw.unlink()
