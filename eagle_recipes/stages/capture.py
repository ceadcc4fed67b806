"""Capture: run the base model once over every training conversation and store the features the draft reads
(planned only when `train.features = "cached"`). Training then reads them back every epoch instead of running
the base model; its workers hold no base model weights, so bases larger than one accelerator can train.

The conversations are tokenized by the training stage's own function (same chat template, assistant mask and
length cut), split into fixed shards of `capture.sequences_per_shard`, and each shard is one task for the Ray
Data actors that hold the engines (`capture.replicas` of them, like synthesis). A shard is written atomically as
it finishes; a re-run keeps every whole shard and redoes the rest. See `data/features.py` for the format.

Engines:
- `hf`: a transformers forward (CPU or GPU, any model transformers loads).
- `vllm`: vLLM's hidden-state extractor (the `extract_hidden_states` speculative method and a connector that
  stores the states), with the same layer-id convention vLLM uses when it serves the draft, and tensor parallelism
  for large bases. The final state is normed and scored by the LM head in the actor itself.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from eagle_recipes.data.features import (
    bytes_per_token,
    head_is_whole,
    shard_is_whole,
    shard_path,
    shard_ranges,
    write_head,
    write_shard,
)
from eagle_recipes.recipe import Recipe
from eagle_recipes.stages.base import Stage, StageContext
from eagle_recipes.stages.common import (
    base_model_path,
    conversation_files,
    conversation_input_files,
    rendering_settings,
    torch_threads,
)

TOKENS_PER_FORWARD = 4096  # sequences are batched up to this many (padded) tokens per forward


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


def top_tokens(lm_head, final, chunk: int = 1024):
    """The base model's top token at every position, scoring `chunk` positions at a time (full-vocabulary logits
    of a whole batch would take tokens x vocabulary x 4 bytes at once)."""
    import torch

    flat = final.reshape(-1, final.shape[-1])
    top = torch.cat([lm_head(flat[i: i + chunk]).argmax(-1) for i in range(0, flat.shape[0], chunk)])
    return top.reshape(final.shape[:-1])


@dataclass(frozen=True)
class CaptureSpec:
    """What every engine needs to know."""

    model_path: str
    data_file: str
    out: str
    algorithm: str
    aux_layer_ids: tuple[int, ...]
    dtype: str  # stored dtype
    engine: str
    tensor_parallel_size: int
    trust_remote_code: bool


class HFCaptureEngine:
    """A transformers forward; hidden_states[k] is the input of layer k, [-1] the final normed state."""

    def __init__(self, spec: CaptureSpec):
        import torch
        from transformers import AutoModelForCausalLM

        self.device = torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
        compute = torch.float32 if self.device.type == "cpu" else torch.bfloat16
        if spec.dtype == "float32":
            compute = torch.float32
        self.model = AutoModelForCausalLM.from_pretrained(spec.model_path, dtype=compute,
                                                          trust_remote_code=spec.trust_remote_code)
        self.model = self.model.to(self.device).eval()
        self.spec = spec

    def features(self, sequences: list[np.ndarray]) -> list[dict]:
        """Per sequence: hidden [T, F], final [T, H], top [T] (torch, on the CPU, in the compute dtype)."""
        import torch

        from eagle_recipes.draft.reference import target_features

        length = max(len(s) for s in sequences)
        input_ids = torch.zeros((len(sequences), length), dtype=torch.long)
        padding = torch.zeros_like(input_ids)
        for row, ids in enumerate(sequences):
            input_ids[row, : len(ids)] = torch.from_numpy(ids.astype(np.int64))
            padding[row, : len(ids)] = 1
        with torch.no_grad():
            out = self.model.base_model(input_ids=input_ids.to(self.device), attention_mask=padding.to(self.device),
                                        output_hidden_states=True)
            final = out.last_hidden_state
            top = top_tokens(self.model.get_output_embeddings(), final)
            hidden = target_features(out.hidden_states, self.spec.algorithm, self.spec.aux_layer_ids)
        return [{"hidden": hidden[row, : len(ids)].cpu(), "final": final[row, : len(ids)].cpu(),
                 "top": top[row, : len(ids)].cpu()} for row, ids in enumerate(sequences)]


class CaptureWorker:
    """Ray Data actor: holds one engine for the whole pass and writes each shard it is given."""

    def __init__(self, spec: dict):
        import torch

        self.spec = CaptureSpec(**{**spec, "aux_layer_ids": tuple(spec["aux_layer_ids"])})
        if not torch.cuda.is_available():
            torch.set_num_threads(torch_threads(os.cpu_count() or 1))
        if self.spec.engine == "vllm":
            from eagle_recipes.capture_vllm import VLLMCaptureEngine

            self.engine = VLLMCaptureEngine(self.spec)
        else:
            self.engine = HFCaptureEngine(self.spec)
        self.data = dict(np.load(self.spec.data_file))

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        results = []
        for task in batch["task"]:
            results.append(json.dumps(self.capture_shard(**json.loads(task))))
        return {"result": np.array(results, dtype=object)}

    def capture_shard(self, shard: int, first: int, count: int) -> dict[str, Any]:
        import torch

        started = time.perf_counter()
        offsets, ids = self.data["offsets"], self.data["ids"]
        sequences = [ids[offsets[i]: offsets[i + 1]] for i in range(first, first + count)]
        rows: list[dict | None] = [None] * len(sequences)
        for positions in batches_by_tokens([len(s) for s in sequences]):
            for position, row in zip(positions, self.engine.features([sequences[p] for p in positions])):
                rows[position] = row
        stored = getattr(torch, self.spec.dtype)
        tensors = {"hidden": torch.cat([r["hidden"] for r in rows]).to(stored),
                   "top": torch.cat([r["top"] for r in rows]).to(torch.int32),
                   "input_ids": torch.from_numpy(np.concatenate(sequences).astype(np.int32))}
        if self.spec.algorithm == "eagle3":
            tensors["final"] = torch.cat([r["final"] for r in rows]).to(stored)
        write_shard(shard_path(Path(self.spec.out), shard), first, tensors)
        return {"shard": shard, "sequences": count, "tokens": int(tensors["input_ids"].numel()),
                "seconds": time.perf_counter() - started}


def run_shards(spec: CaptureSpec, tasks: list[dict], replicas: int) -> Iterator[dict]:
    """The shards through Ray Data: `replicas` actors, each holding one engine, results as they finish."""
    import ray

    from eagle_recipes.engines import cluster_has_gpus, engine_placement

    if not tasks:
        return
    ray.data.DataContext.get_current().enable_progress_bars = False  # the stage reports its own progress
    dataset = ray.data.from_items([{"task": json.dumps(t)} for t in tasks], override_num_blocks=len(tasks))
    placement = engine_placement(spec.tensor_parallel_size, cluster_has_gpus())
    if spec.engine == "hf":  # a transformers forward: one GPU, or the CPU with the CPU build's environment
        placement = {"num_gpus": 1} if cluster_has_gpus() else {"num_cpus": 1}
    results = dataset.map_batches(CaptureWorker, batch_size=1, batch_format="numpy",
                                  compute=ray.data.ActorPoolStrategy(size=min(replicas, len(tasks))),
                                  fn_constructor_kwargs={"spec": spec.__dict__}, **placement)
    for row in results.iter_rows():
        yield json.loads(row["result"])


def capture_spec(recipe: Recipe, model_path: str, out: Path) -> CaptureSpec:
    from eagle_recipes.stages.train import draft_config_for

    draft_config = draft_config_for(recipe, model_path, draft_vocab_size=1)
    from eagle_recipes.stages.train import DATA

    return CaptureSpec(model_path=model_path, data_file=str(out / DATA), out=str(out),
                       algorithm=recipe.draft.algorithm, aux_layer_ids=tuple(draft_config.aux_layer_ids),
                       dtype=recipe.capture.dtype, engine=recipe.capture.engine,
                       tensor_parallel_size=recipe.capture.tensor_parallel_size,
                       trust_remote_code=recipe.model.trust_remote_code)


class CaptureStage(Stage):
    name = "capture"
    description = "run the base model once over the training conversations and store its features"
    headline_metric = "tokens_per_s"

    @staticmethod
    def enabled(recipe: Recipe) -> tuple[bool, str]:
        if recipe.train.features != "cached":
            return False, 'train.features = "online" (the base model runs in each training worker)'
        return True, ""

    @staticmethod
    def depends_on(recipe: Recipe, enabled: set[str]) -> list[str]:
        return ["synthesize"] if "synthesize" in enabled else []

    @staticmethod
    def settings(recipe: Recipe) -> dict[str, Any]:
        draft = recipe.data["draft"]
        return {"capture": recipe.data["capture"], **rendering_settings(recipe),
                "draft": {"algorithm": draft["algorithm"],
                          "aux_layer_ids": draft.get("overrides", {}).get("aux_layer_ids")}}

    @staticmethod
    def input_files(recipe: Recipe) -> list[Path]:
        files = conversation_input_files(recipe)
        if recipe.model.chat_template:
            files.append(recipe.resolve(recipe.model.chat_template))
        return files

    @staticmethod
    def outputs(recipe: Recipe) -> list[str]:
        return ["capture/data.npz", "capture/head.safetensors", "capture/shards/*.safetensors"]

    @staticmethod
    def describe_resources(recipe: Recipe) -> list[str]:
        from eagle_recipes.sizes import gib, training_sizes

        capture = recipe.capture
        per_engine = f"{capture.tensor_parallel_size} GPU" if capture.engine == "vllm" else "1 GPU (or the CPU)"
        lines = [f"engines: {capture.replicas} x {capture.engine}, {per_engine} each"]
        sizes = training_sizes(recipe)
        if sizes:
            bound = "" if sizes["tokens_exact"] else "at most "
            lines.append(f"cache: {bound}{sizes['tokens']:,} tokens x {sizes['bytes_per_token']:,} B = "
                         f"{bound}{gib(sizes['cache_bytes'])}")
        return lines

    @staticmethod
    def run(ctx: StageContext) -> dict[str, Any]:
        import torch

        from eagle_recipes.stages.train import DATA, tokenize_training_data

        recipe, capture = ctx.recipe, ctx.recipe.capture
        model_path = base_model_path(recipe)
        count = tokenize_training_data(recipe, conversation_files(recipe, ctx.upstream), model_path, ctx.out)
        spec = capture_spec(recipe, model_path, ctx.out)
        data = np.load(ctx.out / DATA)
        offsets, ids = data["offsets"], data["ids"]
        if not head_is_whole(ctx.out):
            write_head(ctx.out, model_path, getattr(torch, capture.dtype))
        per_token = bytes_per_token(_hidden_size(model_path), len(spec.aux_layer_ids),
                                    getattr(torch, capture.dtype).itemsize, spec.algorithm)
        _check_disk_room(ctx.out, per_token * int(offsets[-1]))
        tasks, done_before = [], 0
        for index, (first, size) in enumerate(shard_ranges(count, capture.sequences_per_shard)):
            if shard_is_whole(shard_path(ctx.out, index), first, ids[offsets[first]: offsets[first + size]]):
                done_before += size
            else:
                tasks.append({"shard": index, "first": first, "count": size})
        if done_before:
            ctx.log(f"resuming: {done_before} of {count} sequences already captured")
        ctx.progress(done_before, count, "conversations")
        started, captured, tokens = time.time(), 0, 0
        for result in run_shards(spec, tasks, capture.replicas):
            captured += result["sequences"]
            tokens += result["tokens"]
            ctx.progress(done_before + captured, count, "conversations")
        wall = time.time() - started
        shards = len(shard_ranges(count, capture.sequences_per_shard))
        return {"counts": {"sequences": count, "tokens": int(offsets[-1]), "captured_this_run": captured,
                           "resumed_from_earlier_run": done_before, "shards": shards},
                "metrics": {"tokens_per_s": tokens / wall if wall and tokens else 0.0, "bytes_per_token": per_token,
                            "cache_bytes": per_token * int(offsets[-1]), "engine": capture.engine,
                            "dtype": capture.dtype}}


def _check_disk_room(out: Path, cache_bytes: int) -> None:
    """Refuse before the first shard when the cache cannot fit (shards already there count as written)."""
    import shutil

    from eagle_recipes.sizes import gib

    written = sum(p.stat().st_size for p in (out / "shards").glob("*.safetensors")) if (out / "shards").exists() else 0
    free = shutil.disk_usage(out).free
    if cache_bytes - written > free:
        raise RuntimeError(f"{out}: the feature cache needs {gib(cache_bytes - written)} more, the disk has "
                           f"{gib(free)} free; free room, set output_dir on a larger disk, or use "
                           'capture.dtype = "bfloat16" (half of float32)')


def _hidden_size(model_path: str) -> int:
    from eagle_recipes.models import base_model_facts

    return base_model_facts(model_path).hidden_size
