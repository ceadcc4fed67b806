"""Draft vocabulary mapping: d2t (int64 offsets, target = i + d2t[i]) and t2d (bool mask over the target vocab)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from eagle_recipes.errors import UserError


class VocabError(UserError):
    pass


@dataclass
class VocabMapping:
    d2t: torch.Tensor  # int64 [K]
    t2d: torch.Tensor  # bool [V]

    @property
    def draft_vocab_size(self) -> int:
        return int(self.d2t.numel())

    @property
    def target_ids(self) -> torch.Tensor:
        return torch.arange(self.draft_vocab_size, dtype=torch.int64) + self.d2t

    @property
    def is_identity(self) -> bool:
        return self.draft_vocab_size == self.t2d.numel()


def mapping_from_ids(target_ids: np.ndarray | list[int], vocab_size: int) -> VocabMapping:
    """Build d2t/t2d from the chosen target ids (draft ids follow ascending target id)."""
    ids = np.unique(np.asarray(target_ids, dtype=np.int64))
    d2t = torch.from_numpy(ids - np.arange(len(ids), dtype=np.int64))
    t2d = torch.zeros(vocab_size, dtype=torch.bool)
    t2d[torch.from_numpy(ids)] = True
    return VocabMapping(d2t=d2t, t2d=t2d)


def top_k_ids(counts: np.ndarray, k: int) -> np.ndarray:
    """The k most frequent token ids, ties broken by the lower id; only tokens that occur at all."""
    seen = np.flatnonzero(counts)
    order = np.lexsort((seen, -counts[seen]))  # primary: count desc, secondary: id asc
    return seen[order[:k]]


def identity_mapping(vocab_size: int) -> VocabMapping:
    return mapping_from_ids(np.arange(vocab_size), vocab_size)


def load_d2t(path: str | Path, vocab_size: int) -> VocabMapping:
    """Load a d2t.pt (ours or the seed's: any draft-id order) and check it fits the base vocabulary."""
    try:
        d2t = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 - any unreadable file gets the same clear message
        raise VocabError(f"{path}: not a readable torch tensor file ({type(error).__name__}: {error})") from error
    if isinstance(d2t, dict) and "d2t" in d2t:
        d2t = d2t["d2t"]
    if not isinstance(d2t, torch.Tensor) or d2t.dim() != 1 or d2t.dtype not in (torch.int64, torch.int32):
        raise VocabError(f"{path}: expected a 1-D integer tensor of offsets (target = i + d2t[i])")
    if d2t.numel() > vocab_size:
        raise VocabError(f"{path}: {d2t.numel()} draft tokens but the base vocabulary has only {vocab_size}")
    target = torch.arange(d2t.numel(), dtype=torch.int64) + d2t.to(torch.int64)
    if target.min() < 0 or target.max() >= vocab_size:
        raise VocabError(f"{path}: maps to target ids outside 0..{vocab_size - 1} "
                         f"(min {int(target.min())}, max {int(target.max())}); made for another model?")
    if target.unique().numel() != target.numel():
        raise VocabError(f"{path}: several draft ids map to the same target id")
    return mapping_from_ids(target.numpy(), vocab_size)


def save_mapping(mapping: VocabMapping, folder: Path) -> None:
    from eagle_recipes.atomic import atomic_path
    from eagle_recipes.run_folder import RunFolder

    for path, tensor in zip(RunFolder.mapping_files(folder), (mapping.d2t, mapping.t2d)):
        with atomic_path(path) as tmp:
            torch.save(tensor.clone(), tmp)


def load_mapping(folder: Path) -> VocabMapping:
    """The mapping `save_mapping` wrote into `folder`, as it was written."""
    from eagle_recipes.run_folder import RunFolder

    d2t, t2d = (torch.load(path, weights_only=True) for path in RunFolder.mapping_files(folder))
    return VocabMapping(d2t=d2t, t2d=t2d)


def draft_target_ids(vocab_file: str | Path | None, vocab_size: int) -> torch.Tensor:
    """The base-vocabulary id of each draft-vocabulary entry, in draft order: a d2t file's (checked by `load_d2t`),
    or every id when there is no file (a draft over the whole vocabulary)."""
    if not vocab_file:
        return torch.arange(vocab_size)
    d2t = load_d2t(vocab_file, vocab_size).d2t.to(torch.int64)
    return torch.arange(d2t.numel()) + d2t
