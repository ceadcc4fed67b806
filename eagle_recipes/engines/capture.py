"""Capture engines: the base model run once over the training sequences, keeping what the draft reads (the format
is data/feature_cache.py's).

- `hf`: a transformers forward (CPU or GPU, any model transformers loads);
- `vllm`: vLLM's hidden-state extractor (capture_vllm.py; GPUs, tensor parallel for large bases).

Each engine's `capture(sequences)` returns, per sequence, `hidden` [T, F] (what the draft reads), `final` [T, H]
(the final normed state) and `top` [T] (the base model's top token). `CaptureActor` holds one engine in a Ray Data
actor (actor_pool.py) and writes each shard it is given.
"""

from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterator, Protocol

import numpy as np

from eagle_recipes.data.sequences import Sequences
from eagle_recipes.devices import available_device, compute_dtype, has_gpu_here, torch_threads
from eagle_recipes.draft.drafters import reads_aux_states
from eagle_recipes.engines.actor_pool import TaskActor

TOKENS_PER_FORWARD = 4096  # sequences are batched up to this many (padded) tokens per forward


@dataclass(frozen=True)
class CaptureSpec:
    """What every engine needs to know."""

    model_path: str
    data_folder: str  # holds tokenized/, the training sequences (the tokenize stage's folder)
    out: str
    algorithm: str
    aux_layer_ids: tuple[int, ...]
    dtype: str  # stored dtype
    engine: str  # "hf" | "vllm"
    tensor_parallel_size: int
    trust_remote_code: bool
    threads: int = 0  # torch threads of a CPU engine (0: every core; streamed training's servers take a share)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "CaptureSpec":
        return cls(**{**data, "aux_layer_ids": tuple(data["aux_layer_ids"])})


class CaptureEngine(Protocol):
    def capture(self, sequences: list[np.ndarray]) -> list[dict]: ...


def batches_by_tokens(lengths: list[int], budget: int = TOKENS_PER_FORWARD) -> Iterator[list[int]]:
    """Sequence positions grouped so that each padded batch stays within `budget` tokens; longest first, so a
    batch holds sequences of about one length and padding wastes little compute."""
    batch: list[int] = []
    for position in sorted(range(len(lengths)), key=lambda i: -lengths[i]):
        if batch and max(lengths[i] for i in batch + [position]) * (len(batch) + 1) > budget:
            yield batch
            batch = []
        batch.append(position)
    if batch:
        yield batch


class HFCaptureEngine:
    """A transformers forward (draft/target.py's `base_forward`), on `device` (default: this process's GPU, else
    the CPU)."""

    def __init__(self, spec: CaptureSpec, device=None):
        import torch
        from transformers import AutoModelForCausalLM

        self.device = device or available_device()
        compute = torch.float32 if spec.dtype == "float32" else compute_dtype(self.device)
        self.model = AutoModelForCausalLM.from_pretrained(spec.model_path, dtype=compute,
                                                          trust_remote_code=spec.trust_remote_code)
        self.model = self.model.to(self.device).eval()
        self.spec = spec

    def capture(self, sequences: list[np.ndarray]) -> list[dict]:
        """Per sequence: hidden [T, F], final [T, H], top [T] (torch, on the CPU, in the compute dtype)."""
        from eagle_recipes.draft.target import base_forward, pad_sequences, top_tokens

        input_ids, padding = pad_sequences(sequences)
        forward = base_forward(self.model, input_ids.to(self.device), padding.to(self.device), self.spec.algorithm,
                               self.spec.aux_layer_ids)
        top = top_tokens(self.model.get_output_embeddings(), forward.final)
        return [{"hidden": forward.hidden[row, : len(ids)].cpu(), "final": forward.final[row, : len(ids)].cpu(),
                 "top": top[row, : len(ids)].cpu()} for row, ids in enumerate(sequences)]


def make_capture_engine(spec: CaptureSpec, device=None) -> CaptureEngine:
    """The spec's engine; `device` places a transformers engine (vLLM places itself)."""
    if spec.engine == "vllm":
        from eagle_recipes.engines.capture_vllm import VLLMCaptureEngine

        return VLLMCaptureEngine(spec)
    return HFCaptureEngine(spec, device)


def captured_rows(engine: CaptureEngine, spec: CaptureSpec, sequences: list[np.ndarray]) -> dict:
    """These sequences' features back to back, as a shard stores them (and a feature server sends them), in the
    stored dtype: `hidden` [N, F], `top` [N] int32, and `final` [N, H] for drafters that read aux states. The
    engine sees them in batches of about one length (`batches_by_tokens`)."""
    import torch

    rows: list[dict | None] = [None] * len(sequences)
    for positions in batches_by_tokens([len(s) for s in sequences]):
        for position, row in zip(positions, engine.capture([sequences[p] for p in positions])):
            rows[position] = row
    stored = getattr(torch, spec.dtype)
    tensors = {"hidden": torch.cat([r["hidden"] for r in rows]).to(stored),
               "top": torch.cat([r["top"] for r in rows]).to(torch.int32)}
    if reads_aux_states(spec.algorithm):
        tensors["final"] = torch.cat([r["final"] for r in rows]).to(stored)
    return tensors


def engine_in_this_process(spec: CaptureSpec, device=None) -> CaptureEngine:
    """The spec's engine for an actor that holds it for its whole life (capture's, a feature server's): on a CPU,
    torch sized first to the spec's threads, or to every core."""
    import torch

    if not has_gpu_here():
        torch.set_num_threads(torch_threads(spec.threads or os.cpu_count() or 1))
    return make_capture_engine(spec, device)


class CaptureActor(TaskActor):
    """Ray Data actor: holds one engine for the whole pass and writes each shard it is given."""

    def __init__(self, spec: dict, device=None):
        self.spec = CaptureSpec.from_dict(spec)
        self.engine = engine_in_this_process(self.spec, device)
        self.sequences: dict[str, Sequences] = {}

    def run_task(self, task: dict) -> dict:
        return self.capture_shard(**task)

    def capture_shard(self, shard: int, first: int, count: int, folder: str = "") -> dict[str, Any]:
        """Capture sequences [first, first + count) of the sequences in `folder` (a subfolder of the spec's data
        and output folders: "" for the training split) into shard `shard` there."""
        import torch

        from eagle_recipes.data.feature_cache import shard_path, write_shard

        if folder not in self.sequences:
            self.sequences[folder] = Sequences.load(Path(self.spec.data_folder) / folder)
        started = time.perf_counter()
        sequences = [self.sequences[folder].ids_of(i) for i in range(first, first + count)]
        tensors = {**captured_rows(self.engine, self.spec, sequences),
                   "input_ids": torch.from_numpy(np.concatenate(sequences).astype(np.int32))}
        write_shard(shard_path(Path(self.spec.out) / folder, shard), first, tensors)
        return {"shard": shard, "folder": folder, "sequences": count, "tokens": int(tensors["input_ids"].numel()),
                "seconds": time.perf_counter() - started}
