"""The feature cache: the base model's features captured once, what cached training reads instead of running
the base model.

Layout of the capture stage's folder:
- the sequences it was captured from are the tokenize stage's (data/sequences.py): what every training mode reads.
- `shards/NNNNN.safetensors`: sequences [first, first + count) of `tokenized/`, all their tokens back to back:
  `hidden` [N, F], what the draft reads (EAGLE-3: the aux layers' states concatenated, F = 3H; EAGLE-1: the
  final normed state, F = H); `final` [N, H], the final normed state (EAGLE-3 and DFlash: EAGLE-1's `hidden` is it);
  `top` [N] int32, the base model's top token over its whole vocabulary; `input_ids` [N] int32, to check.
- `head.safetensors`: `embed` [V, H] (the input embeddings), `lm_head` [V, H] and `norm` [H] (final norm).

Why the final state and not logits: a worker turns the final state into logits over the draft vocabulary with the
LM head's draft rows (one small matmul), so a token costs 2H bytes in bf16 instead of 2K: for SmolLM2 (H 576,
K 8,192) 1.2 kB instead of 16 kB, for Llama-3.1-8B (H 4,096, K 32,000) 8 kB instead of 64 kB; and the cache
stays valid when the draft vocabulary changes. The top token (4 bytes) says whether the target's choice is a
draft token, which the restricted logits cannot tell.

Shards are written whole or not at all (atomic rename) and checked when read back, so a capture killed at any
point resumes by shard and a damaged shard is redone rather than read.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from eagle_recipes.data.sequences import sequence_offsets
from eagle_recipes.run_folder import FEATURE_SHARDS, HEAD_FILE

if TYPE_CHECKING:  # torch is imported where tensors are made: the capture stage's planning needs none
    import torch



def bytes_per_token(hidden_size: int, aux_layers: int, dtype_bytes: int, algorithm: str) -> int:
    """Feature bytes one token costs in the cache (hidden + final + top + input id)."""
    from eagle_recipes.draft.drafters import reads_aux_states

    states = (aux_layers + 1) if reads_aux_states(algorithm) else 1  # the aux states and the final one
    return states * hidden_size * dtype_bytes + 4 + 4


def shard_path(folder: Path, index: int) -> Path:
    return folder / FEATURE_SHARDS / f"{index:05d}.safetensors"


def shard_ranges(count: int, per_shard: int) -> list[tuple[int, int]]:
    """(first sequence, sequence count) of every shard: a fixed split, so shard i is always the same work."""
    return [(first, min(per_shard, count - first)) for first in range(0, count, per_shard)]


def write_shard(path: Path, first: int, tensors: dict[str, torch.Tensor]) -> None:
    from safetensors.torch import save_file

    from eagle_recipes.atomic import atomic_path

    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp), metadata={"first": str(first)})


def shard_is_whole(path: Path, first: int, expected_ids: np.ndarray) -> bool:
    """A shard that opens, starts at `first` and holds exactly these token ids (anything else is redone)."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as handle:
            if handle.metadata().get("first") != str(first):
                return False
            ids = handle.get_tensor("input_ids").numpy()
            rows = {name: handle.get_slice(name).get_shape()[0] for name in handle.keys()}
    except Exception:  # truncated or not a safetensors file at all: safetensors raises several types
        return False
    return np.array_equal(ids, expected_ids) and all(n == len(expected_ids) for n in rows.values())


@dataclass
class _Shard:
    first: int
    count: int
    token_start: int  # offset of the shard's first token in the sequences' flat arrays
    handle: object


class FeatureStore:
    """Random access to captured features by sequence index (memory-mapped; only the rows asked for are read)."""

    def __init__(self, folder: Path, sequences_folder: Path, head_folder: Path | None = None):
        """`folder`: the cache's shards; `sequences_folder`: the sequences they were captured from (the tokenize
        stage's); `head_folder`: where head.safetensors is (default `folder`; the held-out split's cache shares the
        training cache's)."""
        from safetensors import safe_open

        self.folder, self.head_folder = folder, head_folder or folder
        self.offsets = sequence_offsets(sequences_folder)
        self.shards: list[_Shard] = []
        for path in sorted((folder / FEATURE_SHARDS).glob("*.safetensors")):
            handle = safe_open(str(path), framework="pt")
            first = int(handle.metadata()["first"])
            rows = handle.get_slice("input_ids").get_shape()[0]
            count = int(np.searchsorted(self.offsets, self.offsets[first] + rows) - first)
            self.shards.append(_Shard(first, count, int(self.offsets[first]), handle))
        self.firsts = [s.first for s in self.shards]
        self.has_final = bool(self.shards) and "final" in self.shards[0].handle.keys()

    def _rows(self, index: int, name: str) -> torch.Tensor:
        shard = self.shards[int(np.searchsorted(self.firsts, index, side="right")) - 1]
        start = int(self.offsets[index]) - shard.token_start
        end = int(self.offsets[index + 1]) - shard.token_start
        return shard.handle.get_slice(name)[start:end]

    def batch(self, indices: list[int], length: int, device, dtype) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(hidden [B, T, F], final [B, T, H], top [B, T]) for these sequences, zero-padded to `length`."""
        hidden_rows = [self._rows(i, "hidden") for i in indices]
        final_rows = [self._rows(i, "final") for i in indices] if self.has_final else hidden_rows
        return padded_features(hidden_rows, final_rows, [self._rows(i, "top") for i in indices], length, device,
                               dtype)

    def head_modules(self, draft_ids: torch.Tensor, device, dtype):
        """(embedding, LM head's draft rows as a Linear, final norm weight holder): all a cached worker holds of
        the base model."""
        from safetensors import safe_open

        with safe_open(str(self.head_folder / HEAD_FILE), framework="pt") as handle:
            tensors = {name: handle.get_tensor(name) for name in ("embed", "lm_head", "norm")}
        return head_modules(tensors, draft_ids, device, dtype)

    def draft_mask(self, draft_ids: torch.Tensor, device) -> torch.Tensor:
        """[V] bool: which base-model tokens are draft tokens (indexes `top`)."""
        from safetensors import safe_open

        with safe_open(str(self.head_folder / HEAD_FILE), framework="pt") as handle:
            vocab = handle.get_slice("lm_head").get_shape()[0]
        return draft_mask(vocab, draft_ids, device)

    @property
    def tokens(self) -> int:
        return int(self.offsets[-1])


def padded_features(hidden_rows: list, final_rows: list, top_rows: list, length: int, device,
                    dtype) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-sequence feature rows as a batch: (hidden [B, T, F], final [B, T, H], top [B, T]), zero-padded to
    `length` (cached and streamed workers alike)."""
    import torch

    def stack(rows: list[torch.Tensor], cast) -> torch.Tensor:
        out = torch.zeros((len(rows), length, *rows[0].shape[1:]), dtype=cast)
        for row, tensor in enumerate(rows):
            out[row, : tensor.shape[0]] = tensor.to(cast)
        return out.to(device)

    return stack(hidden_rows, dtype), stack(final_rows, dtype), stack(top_rows, torch.long)


def head_modules(tensors: dict[str, torch.Tensor], draft_ids: torch.Tensor, device, dtype):
    """(embedding, LM head's draft rows as a Linear, final norm weight holder) from `head_tensors`' three tensors:
    all a worker without the base model holds of it."""
    import torch

    head_weight = tensors["lm_head"].index_select(0, draft_ids.cpu())
    embed = torch.nn.Embedding.from_pretrained(tensors["embed"].to(dtype), freeze=True).to(device)
    draft_head = torch.nn.Linear(head_weight.shape[1], head_weight.shape[0], bias=False)
    draft_head.weight = torch.nn.Parameter(head_weight.to(dtype), requires_grad=False)
    norm = torch.nn.Module()
    norm.weight = torch.nn.Parameter(tensors["norm"].to(dtype), requires_grad=False)
    return embed, draft_head.to(device), norm.to(device)


def draft_mask(vocab_size: int, draft_ids: torch.Tensor, device) -> torch.Tensor:
    """[V] bool: which base-model tokens are draft tokens (indexes `top`)."""
    import torch

    mask = torch.zeros(vocab_size, dtype=torch.bool)
    mask[draft_ids.cpu()] = True
    return mask.to(device)


def base_model_tensor(model_path: str, suffixes: tuple[str, ...]) -> torch.Tensor:
    """One tensor of the base model's safetensors files, found by the end of its name outside the decoder layers,
    read alone: a 70B base is never loaded whole for its embeddings."""
    from safetensors import safe_open

    for path in sorted(Path(model_path).glob("*.safetensors")):
        with safe_open(str(path), framework="pt") as handle:
            for name in handle.keys():
                if ".layers." not in name and name.endswith(suffixes):
                    return handle.get_tensor(name)
    raise FileNotFoundError(f"{model_path}: no tensor named *{suffixes[0]} in its safetensors files")


def head_tensors(model_path: str) -> dict[str, torch.Tensor]:
    """The pieces of the base model a cached worker needs: input embeddings, LM head (the embeddings when tied),
    final norm."""
    embed = base_model_tensor(model_path, ("embed_tokens.weight",))
    try:
        lm_head = base_model_tensor(model_path, ("lm_head.weight",))
    except FileNotFoundError:  # tied embeddings
        lm_head = embed
    norm = base_model_tensor(model_path, ("model.norm.weight", "language_model.norm.weight", "norm.weight"))
    return {"embed": embed, "lm_head": lm_head, "norm": norm}


def write_head(folder: Path, model_path: str, dtype: torch.dtype) -> None:
    from safetensors.torch import save_file

    from eagle_recipes.atomic import atomic_path

    tensors = {name: tensor.to(dtype).contiguous().clone() for name, tensor in head_tensors(model_path).items()}
    with atomic_path(folder / HEAD_FILE) as tmp:
        save_file(tensors, str(tmp))


def head_is_whole(folder: Path) -> bool:
    """head.safetensors opens and holds the three tensors (a cut or foreign file is written again)."""
    from safetensors import safe_open

    try:
        with safe_open(str(folder / HEAD_FILE), framework="pt") as handle:
            return {"embed", "lm_head", "norm"} <= set(handle.keys())
    except Exception:  # noqa: BLE001 - missing, truncated or not safetensors: safetensors raises several types
        return False
