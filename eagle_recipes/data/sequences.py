"""The training sequences: every training conversation rendered with the chat template, tokenized once, stored as
flat arrays (the `tokenized/` folder) and indexed by sequence. Online training and capture both read them, so both
see the same sequences in the same order, and cached features line up with them token for token.

`tokenized/`: `ids.npy` int32 [N tokens], `mask.npy` int8 [N] (1 where a token is an assistant label),
`offsets.npy` int64 [count + 1] (sequence i is ids[offsets[i]:offsets[i+1]]), `pad_id.npy`. Plain .npy files are
read memory-mapped: a capture actor or a training worker maps them instead of reading every token into its own
memory (750M tokens are ~3.75 GB), only the pages of the sequences it reads come in, and the processes of one
node share them through the page cache.
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
# in the fingerprint of every stage that writes sequences: a run folder of another layout is written again
SEQUENCES_LAYOUT = "npy-mapped"


@dataclass
class Sequences:
    ids: np.ndarray
    mask: np.ndarray
    offsets: np.ndarray
    pad_id: int = 0

    @classmethod
    def load(cls, folder: Path) -> "Sequences":
        """The sequences in `folder`, memory-mapped (read-only: nothing is read until a sequence is asked for)."""
        stored = Path(folder) / SEQUENCES_FOLDER
        ids, mask, offsets = (np.load(stored / f"{name}.npy", mmap_mode="r") for name in ARRAYS)
        return cls(ids, mask, offsets, int(np.load(stored / "pad_id.npy")))

    @property
    def count(self) -> int:
        return int(self.offsets.shape[0] - 1)

    @property
    def tokens(self) -> int:
        return int(self.offsets[-1])

    def head(self, count: int) -> "Sequences":
        """The first `count` sequences (all of them when there are fewer), still memory-mapped."""
        return Sequences(self.ids, self.mask, self.offsets[: count + 1], self.pad_id)

    def ids_of(self, index: int) -> np.ndarray:
        return self.ids[self.offsets[index]: self.offsets[index + 1]]

    def mask_of(self, index: int) -> np.ndarray:
        return self.mask[self.offsets[index]: self.offsets[index + 1]]

    def save(self, folder: Path) -> None:
        """All arrays at once, atomically: a reader sees the whole folder or none of it."""
        with atomic_path(Path(folder) / SEQUENCES_FOLDER) as tmp:
            tmp.mkdir()
            for name in ARRAYS:
                np.save(tmp / f"{name}.npy", np.ascontiguousarray(getattr(self, name)))
            np.save(tmp / "pad_id.npy", np.int64(self.pad_id))


def has_sequences(folder: Path) -> bool:
    return (Path(folder) / SEQUENCES_FOLDER / "offsets.npy").exists()


def sequence_offsets(folder: Path) -> np.ndarray:
    """The offsets alone (the token arrays are not read)."""
    return np.load(Path(folder) / SEQUENCES_FOLDER / "offsets.npy")


def sequence_count(folder: Path) -> int:
    return int(sequence_offsets(folder).shape[0] - 1)


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
    return Sequences(ids, mask, offsets, int(tokenizer.pad_token_id or 0))


def write_tokenized(tokenizer, conversations: Iterable[list[dict]], max_seq_len: int, folder: Path) -> int:
    """Render and tokenize conversations into `folder`'s sequences as they stream by; returns how many were kept.
    The same arrays as `tokenize(...).save(folder)`, but memory holds one chunk of conversations and a length per
    sequence, not every token: the tokens go to disk as they are made."""
    lengths: list[int] = []
    with atomic_path(Path(folder) / SEQUENCES_FOLDER) as tmp:
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
        np.save(tmp / "pad_id.npy", np.int64(tokenizer.pad_token_id or 0))
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
