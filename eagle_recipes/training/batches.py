"""Which sequences each micro-batch takes, and how they become tensors.

Data order is a pure function of (seed, epoch, step, rank), so a run killed at any point resumes from its last
checkpoint to the same result, N workers see exactly the sequences one worker sees with N-fold gradient
accumulation, and online and cached training see the same batches.
"""

from __future__ import annotations

from typing import Iterator

import numpy as np
import torch

from eagle_recipes.data.sequences import Sequences
from eagle_recipes.draft.target import pad_sequences


def micro_batch_indices(count: int, seed: int, epoch: int, step_in_epoch: int, rank: int, world: int,
                        accumulation: int, batch_size: int, micro: int) -> list[int]:
    """Sequence indices of one micro-batch. A global batch is world * accumulation * batch_size sequences;
    micro-batch `micro` of `rank` takes slot (micro * world + rank), so the union over ranks and micro-steps
    is the same whatever the split between workers and accumulation."""
    return _slot(epoch_order(count, seed, epoch), step_in_epoch, rank, world, accumulation, batch_size, micro)


def epoch_order(count: int, seed: int, epoch: int) -> np.ndarray:
    return np.random.default_rng(seed + epoch).permutation(count)


def _slot(order: np.ndarray, step_in_epoch: int, rank: int, world: int, accumulation: int, batch_size: int,
          micro: int) -> list[int]:
    start = step_in_epoch * world * accumulation * batch_size + (micro * world + rank) * batch_size
    return order[start: start + batch_size].tolist()


def planned_micro_batches(count: int, seed: int, per_epoch: int, first_step: int, last_step: int, rank: int,
                          world: int, accumulation: int, batch_size: int) -> Iterator[list[int]]:
    """The sequence indices of every micro-batch `rank` takes from step `first_step` up to `last_step`, in the
    order it takes them (what a streamed worker asks its feature servers for ahead)."""
    for step in range(first_step, last_step):
        epoch, step_in_epoch = divmod(step, per_epoch)
        order = epoch_order(count, seed, epoch)  # once a step, not once a micro-batch
        for micro in range(accumulation):
            yield _slot(order, step_in_epoch, rank, world, accumulation, batch_size, micro)


def steps_per_epoch(count: int, world: int, accumulation: int, batch_size: int) -> int:
    return count // (world * accumulation * batch_size)


def collate(sequences: Sequences, indices: list[int], loss_on: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(input_ids, loss_mask, padding) [B, T] for these sequences, right-padded with the pad id."""
    input_ids, padding = pad_sequences([sequences.ids_of(i) for i in indices], sequences.pad_id)
    loss_mask = padding.clone() if loss_on == "all" else torch.zeros_like(padding)
    if loss_on != "all":
        for row, index in enumerate(indices):
            mask = sequences.mask_of(index)
            loss_mask[row, : len(mask)] = torch.from_numpy(mask.astype(np.int64))
    return input_ids, loss_mask, padding
