"""Streamed features (`train.features = "streamed"`): a training worker's side of the feature servers
(engines/feature_server.py).

The worker knows which sequences its next micro-batches take (data order is a pure function of seed, epoch, step
and rank: training/batches.py), so it asks for them ahead: at most `train.streamed.in_flight` requests are out at
once (back-pressure: a slow trainer never piles up features in the object store; a slow server is waited on).
Nothing is written: every epoch asks again, except for what the stream cache keeps (`train.streamed.cache_gib` per
worker, filled first come first kept, read back as it was served).

The worker holds what a cached worker holds (the embeddings and the LM head's draft rows, read alone from the base
model's files in the stored dtype, as the capture stage's head.safetensors holds them), so a streamed batch and a
cached one give the same TargetOutputs.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Any, Iterable, Iterator

import torch

from eagle_recipes.data.feature_cache import draft_mask, head_modules, head_tensors, padded_features
from eagle_recipes.draft.target_outputs import TargetOutputs


class StreamCache:
    """Served feature rows kept up to a byte budget, keyed by (sequences folder, index): first come first kept, no
    eviction (data order is random, so no policy hits more often)."""

    def __init__(self, budget_bytes: int):
        self.budget, self.used = budget_bytes, 0
        self.rows: dict[tuple[str, int], dict[str, torch.Tensor]] = {}
        self.hits = 0

    def __contains__(self, key: tuple[str, int]) -> bool:
        return key in self.rows

    def get(self, key: tuple[str, int]) -> dict[str, torch.Tensor]:
        self.hits += 1
        return self.rows[key]

    def keep(self, key: tuple[str, int], rows: dict[str, torch.Tensor]) -> None:
        size = sum(tensor.numel() * tensor.element_size() for tensor in rows.values())
        if key not in self.rows and self.used + size <= self.budget:
            self.rows[key] = rows
            self.used += size


@dataclass
class _Request:
    indices: tuple[int, ...]
    missing: list[int]  # the ones not in the stream cache when it was asked: what the server computes
    handle: Any  # the servers' answer, or a reference to it


class StreamedTarget:
    """The base model's outputs for a batch, from the feature servers, asked for ahead (see the module's text)."""

    def __init__(self, config, draft_ids: torch.Tensor, device: torch.device, dtype: torch.dtype, servers,
                 folder: str, shared: "StreamedTarget | None" = None):
        """`servers`: RayFeatureServers or LocalFeatureServers; `folder`: the sequences served (the training split's
        or the held-out one's); `shared`: a target of another split whose head modules and cache this one reuses."""
        self.servers, self.folder, self.device, self.dtype = servers, folder, device, dtype
        self.bound = max(1, config.feature_settings["in_flight"])
        if shared is None:
            stored = getattr(torch, config.feature_servers["spec"]["dtype"])
            tensors = {name: tensor.to(stored) for name, tensor in head_tensors(config.model_path).items()}
            self.embed, self.draft_head, self.final_norm = head_modules(tensors, draft_ids, device, dtype)
            self.in_draft = draft_mask(tensors["lm_head"].shape[0], draft_ids, device)
            self.cache = StreamCache(int(config.feature_settings["cache_gib"] * 2**30))
        else:
            self.embed, self.draft_head, self.final_norm = shared.embed, shared.draft_head, shared.final_norm
            self.in_draft, self.cache = shared.in_draft, shared.cache
        self.config, self.draft_ids = config, draft_ids
        self.pending: deque[_Request] = deque()
        self.upcoming: Iterator[list[int]] = iter(())
        self.turn = 0
        self.most_in_flight = 0  # the most requests that were out at once (never above the bound)
        self.requested_sequences = 0  # sequences the servers were asked to compute

    def expect(self, upcoming: Iterable[list[int]]) -> None:
        """The micro-batches this worker will ask for next, in order: their features are requested ahead."""
        self.pending.clear()
        self.upcoming = iter(upcoming)

    def for_split(self, sequences_folder: str, features_folder: str) -> "StreamedTarget":
        """The same servers, head and cache, serving another split's sequences (the held-out one's)."""
        return StreamedTarget(self.config, self.draft_ids, self.device, self.dtype, self.servers, sequences_folder,
                              shared=self)

    def outputs(self, input_ids, loss_mask, padding, indices: list[int]) -> TargetOutputs:
        self._top_up()
        if self.pending and self.pending[0].indices == tuple(indices):
            request = self.pending.popleft()
        else:  # not the batch expected next (or none expected): asked for now
            request = self._request(list(indices))
        rows = self._rows(request)
        self._top_up()  # the next batch is computed while this one trains
        hidden, final, top = padded_features([r["hidden"] for r in rows], [r.get("final", r["hidden"]) for r in rows],
                                             [r["top"] for r in rows], input_ids.shape[1], self.device, self.dtype)
        with torch.no_grad():
            return TargetOutputs(input_ids=input_ids, loss_mask=loss_mask, padding=padding,
                                 draft_logits=self.draft_head(final), top_in_draft=self.in_draft[top], hidden=hidden)

    def _request(self, indices: list[int]) -> _Request:
        missing = [i for i in indices if (self.folder, i) not in self.cache]
        handle = self.servers.submit(self.folder, missing, self.turn) if missing else None
        self.turn += 1
        self.requested_sequences += len(missing)
        return _Request(tuple(indices), missing, handle)

    def _top_up(self) -> None:
        while len(self.pending) < self.bound:
            indices = next(self.upcoming, None)
            if indices is None:
                break
            self.pending.append(self._request(indices))
        self.most_in_flight = max(self.most_in_flight, len(self.pending))

    def _rows(self, request: _Request) -> list[dict[str, torch.Tensor]]:
        """Per sequence of the request: its hidden, final (when served) and top rows, from the servers' answer
        or the cache; what was served is offered to the cache."""
        served: dict[int, dict[str, torch.Tensor]] = {}
        if request.missing:
            answer = self.servers.result(request.handle)
            names = [name for name in ("hidden", "final", "top") if name in answer]
            start = 0
            for index, length in zip(request.missing, answer["lengths"]):
                served[index] = {name: answer[name][start: start + length] for name in names}
                start += length
                self.cache.keep((self.folder, index), {k: v.clone() for k, v in served[index].items()})
        return [served[i] if i in served else self.cache.get((self.folder, i)) for i in request.indices]
