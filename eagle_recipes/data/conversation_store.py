"""Conversations kept on disk, not in memory: a JSON Lines file and the byte offset of each row, in the list's order.

The prompt reader (data/formats.py::load_conversations) writes every usable row here as it streams its sources and
keeps only what ordering and de-duplication need (an id and a content digest per row); the list it returns is a
`ConversationStore`, which reads a conversation when it is asked for. At 200k conversations that is a few MB of
offsets instead of a Python object per turn (about 1 GB), and a shard of work can name its rows by offset
(`rows_at`) instead of carrying them.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import weakref
from collections.abc import Sequence
from pathlib import Path
from typing import Iterator

import numpy as np

ROWS_FILE = "rows.jsonl"


class StoreWriter:
    """Appends rows to a store's file and remembers where each starts."""

    def __init__(self, folder: Path | None = None):
        if folder is None:  # a private folder, removed with the last store that reads it
            self.folder = Path(tempfile.mkdtemp(prefix="eagle-recipes-conversations-"))
            self._owned = True
        else:
            self.folder = Path(folder)
            self.folder.mkdir(parents=True, exist_ok=True)
            self._owned = False
        self.path = self.folder / ROWS_FILE
        self._handle = open(self.path, "wb")
        self._offsets: list[int] = []

    def append(self, row: dict) -> None:
        """Write one row (its index is the count of rows written before it)."""
        self._offsets.append(self._handle.tell())
        self._handle.write(json.dumps(row, ensure_ascii=False).encode() + b"\n")

    def close(self, order: Sequence[int] | np.ndarray | None = None) -> "ConversationStore":
        """The store of the rows written, in `order` (indices into the writing order; all of them by default)."""
        self._handle.close()
        offsets = np.asarray(self._offsets, dtype=np.int64)
        if order is not None:
            offsets = offsets[np.asarray(order, dtype=np.int64)] if len(order) else offsets[:0]
        store = ConversationStore(self.path, offsets)
        if self._owned:
            weakref.finalize(store, shutil.rmtree, self.folder, True)
        return store


class ConversationStore(Sequence):
    """An ordered list of conversations read from disk on demand: `len`, indexing, slicing (a list) and iteration,
    like the list it stands for."""

    def __init__(self, path: Path, offsets: np.ndarray):
        self.path = Path(path)
        self.offsets = offsets

    def __len__(self) -> int:
        return int(self.offsets.shape[0])

    def __getitem__(self, index):
        if isinstance(index, slice):
            return rows_at(self.path, self.offsets[index].tolist())
        return rows_at(self.path, [int(self.offsets[index])])[0]

    def __iter__(self) -> Iterator[dict]:
        for start in range(0, len(self), 1024):
            yield from self[start: start + 1024]

    def offsets_of(self, start: int, stop: int) -> list[int]:
        """Where rows start..stop are in the file: what a task names instead of carrying the rows."""
        return self.offsets[start:stop].tolist()


def rows_at(path: str | Path, offsets: list[int]) -> list[dict]:
    """The rows starting at these byte offsets of a store's file, in the order given."""
    rows = []
    with open(path, "rb") as handle:
        for offset in offsets:
            handle.seek(offset)
            rows.append(json.loads(handle.readline()))
    return rows
