"""Tokenize: render every conversation with the base model's chat template and tokenize it once, in parallel, into
fixed sequence shards (data/sequences.py) of the training and the held-out split. Calibrate counts tokens from
them; capture and training read them memory-mapped; nothing renders a conversation a second time.

The conversations come in shards of their own: synthesize's (`synthesis.batch_size` each), or, when the recipe
trains on its own `data.conversations`, the same rows read once and written here in shards of
CONVERSATIONS_PER_SHARD. Conversation shard k becomes sequence shard k of each split, so the sequences keep the
conversations' order. Each shard is one task for the Ray Data actors that hold the tokenizer (as many as the
cores, at most one per shard: engines/actor_pool.py; `tokenize.actors`), or, for less than RAY_DATA_MIN_BYTES of
conversations, of the stage's own task (the same class, called here: the same shards). Each is written whole or not
at all, so a killed run keeps every finished shard and redoes the rest.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Iterator

from eagle_recipes.data.formats import HELD_OUT_SPLIT, TRAIN_SPLIT
from eagle_recipes.recipe.training_data import conversation_input_files
from eagle_recipes.engines.actor_pool import TaskActor
from eagle_recipes.recipe import Recipe
from eagle_recipes.recipe.base_model import base_model_path, rendering_settings
from eagle_recipes.run_folder import HELD_OUT_FOLDER, RELATIVE, SEQUENCES_FOLDER, SYNTHESIZE, TOKENIZE
from eagle_recipes.stages.base import Stage, StageContext

CONVERSATIONS_PER_SHARD = 2048  # the recipe's own conversations, staged in shards of this many rows
RAY_DATA_MIN_BYTES = 64 << 20  # below this much conversation data the stage's own task tokenizes
SPLIT_FOLDERS = {TRAIN_SPLIT: "", HELD_OUT_SPLIT: HELD_OUT_FOLDER}  # where each split's sequences go


class TokenizeActor(TaskActor):
    """Ray Data actor: holds the recipe's tokenizer (and chat template) and turns one conversation shard into
    sequence shard k of both splits."""

    def __init__(self, model_path: str, template_file: str, trust_remote_code: bool, thinking: bool | None,
                 max_seq_len: int, holdout_fraction: float, out: str):
        from eagle_recipes.data.chat import load_tokenizer

        self.tokenizer = load_tokenizer(model_path, template_file, trust_remote_code, thinking)
        self.max_seq_len, self.holdout_fraction, self.out = max_seq_len, holdout_fraction, Path(out)

    def run_task(self, task: dict) -> dict:
        from eagle_recipes.data.formats import read_conversation_rows, split_of
        from eagle_recipes.data.sequences import write_shard
        from eagle_recipes.data.sources import FileSource

        started, kept = time.perf_counter(), {}
        rows = list(read_conversation_rows([FileSource(Path(task["file"]), "conversations")]))  # one shard's
        for split, folder in SPLIT_FOLDERS.items():
            chosen = (row["conversations"] for row in rows if split_of(row, self.holdout_fraction) == split)
            kept[split] = write_shard(self.tokenizer, chosen, self.max_seq_len, self.out / folder, task["shard"])
        return {"shard": task["shard"], "sequences": kept, "seconds": time.perf_counter() - started}


def conversation_shards(recipe: Recipe, upstream: dict[str, Path], out: Path) -> list[Path]:
    """The conversation shards to tokenize, in order: synthesize's, or the recipe's own conversations written
    once into `out` in shards of CONVERSATIONS_PER_SHARD (kept for a re-run)."""
    from eagle_recipes.run_folder import CONVERSATION_SHARDS

    if SYNTHESIZE in upstream:
        return sorted((upstream[SYNTHESIZE] / CONVERSATION_SHARDS).glob("*.jsonl"))
    staged = out / CONVERSATION_SHARDS
    if not staged.exists():
        _stage_conversations(recipe, staged)
    return sorted(staged.glob("*.jsonl"))


def _stage_conversations(recipe: Recipe, staged: Path) -> None:
    """The recipe's data.conversations, checked and written as JSONL shards (all at once: a cut copy is redone)."""
    from eagle_recipes.atomic import atomic_path
    from eagle_recipes.data.formats import read_conversation_rows

    with atomic_path(staged) as tmp:
        tmp.mkdir(parents=True)
        handle, index = None, 0
        for number, row in enumerate(read_conversation_rows(recipe.conversation_sources())):
            if number % CONVERSATIONS_PER_SHARD == 0:
                if handle:
                    handle.close()
                handle = open(tmp / f"{index:05d}.jsonl", "w", encoding="utf-8")
                index += 1
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")
        if handle:
            handle.close()


def pending_shards(out: Path, count: int) -> list[int]:
    """The shards not yet whole in both splits."""
    from eagle_recipes.data.sequences import has_shard

    return [index for index in range(count)
            if not all(has_shard(out / folder, index) for folder in SPLIT_FOLDERS.values())]


class TokenizeStage(Stage):
    name = TOKENIZE
    description = "render and tokenize the conversations once, on Ray Data actors, into sequence shards"
    headline_metric = "sequences"
    reads_from = (SYNTHESIZE,)

    @classmethod
    def headline(cls, manifest: dict[str, Any]) -> str:
        counts = manifest.get("counts", {})
        return (f"{counts.get('sequences', 0):,} sequences ({counts.get('tokens', 0):,} tokens) in "
                f"{counts.get('sequence_shards', 0)} shards, {counts.get('holdout_sequences', 0):,} held out")

    @staticmethod
    def settings(recipe: Recipe) -> dict[str, Any]:
        from eagle_recipes.data.sequences import SEQUENCES_LAYOUT

        return {**rendering_settings(recipe), "sequences": SEQUENCES_LAYOUT}

    @staticmethod
    def input_files(recipe: Recipe) -> list[Path]:
        files = conversation_input_files(recipe)
        if recipe.model.chat_template:
            files.append(recipe.resolve(recipe.model.chat_template))
        return files

    @staticmethod
    def outputs(recipe: Recipe) -> list[str]:
        sequences = RELATIVE.sequences
        return [f"{sequences / SEQUENCES_FOLDER}/NNNNN/", f"{sequences / HELD_OUT_FOLDER / SEQUENCES_FOLDER}/NNNNN/"]

    @staticmethod
    def describe_resources(recipe: Recipe) -> list[str]:
        if recipe.tokenize.actors:
            return [f"Ray Data: {recipe.tokenize.actors} tokenizing actors x 1 CPU, a conversation shard each at a time"]
        return [f"Ray Data: tokenizing actors x 1 CPU, as many as the cores, when the conversations total "
                f"{RAY_DATA_MIN_BYTES >> 20} MiB or more (else tokenized in the stage's own task)"]

    @staticmethod
    def run(ctx: StageContext) -> dict[str, Any]:
        from eagle_recipes.data.sequences import Sequences
        from eagle_recipes.recipe.base_model import chat_template_file, thinking_when_rendered

        recipe = ctx.recipe
        files = conversation_shards(recipe, ctx.upstream, ctx.out)
        pending = pending_shards(ctx.out, len(files))
        done_before = len(files) - len(pending)
        if done_before:
            ctx.log(f"resuming: {done_before} of {len(files)} shards already tokenized")
        ctx.progress(done_before, len(files), "conversation shards")
        actor = {"model_path": base_model_path(recipe), "template_file": chat_template_file(recipe),
                 "trust_remote_code": recipe.model.trust_remote_code, "thinking": thinking_when_rendered(recipe),
                 "max_seq_len": recipe.train.max_seq_len, "holdout_fraction": recipe.dataset.holdout_fraction,
                 "out": str(ctx.out)}
        tasks = [{"shard": index, "file": str(files[index])} for index in pending]
        actors = tokenizing_actors(recipe.tokenize.actors, tasks, files)
        started, finished = time.time(), 0
        for _ in tokenized(tasks, actors, actor):
            finished += 1
            ctx.progress(done_before + finished, len(files), "conversation shards")
        wall = time.time() - started
        train, held_out = Sequences.load(ctx.out), Sequences.load(ctx.out / HELD_OUT_FOLDER)
        return {"counts": {"sequences": train.count, "tokens": train.tokens, "holdout_sequences": held_out.count,
                           "holdout_tokens": held_out.tokens, "sequence_shards": len(files),
                           "tokenized_this_run": len(tasks), "resumed_from_earlier_run": done_before},
                "metrics": {"sequences": train.count, "actors": actors,
                            "tokens_per_s": (train.tokens + held_out.tokens) / wall if wall and tasks else 0.0}}


def tokenized(tasks: list[dict], actors: int, actor: dict[str, Any]) -> Iterator[dict]:
    """Each task's result as it finishes: on `actors` Ray Data actors, or in this task when `actors` is 0."""
    from eagle_recipes.engines.actor_pool import run_in_actor_pool

    if actors:
        yield from run_in_actor_pool(TokenizeActor, tasks, actors, actor, {"num_cpus": 1})
        return
    if tasks:
        here = TokenizeActor(**actor)
        for task in tasks:
            yield here.run_task(task)


def tokenizing_actors(requested: int, tasks: list[dict], files: list[Path]) -> int:
    """How many Ray Data actors tokenize (0: none, this task does): `tokenize.actors` when set; else none below
    RAY_DATA_MIN_BYTES of conversations (starting actors would cost more than the tokenizing), and otherwise as
    many as there are cores: this machine's on an embedded Ray (which counts more CPUs than there are cores, for
    engines and workers that mostly wait), the cluster's CPUs on a cluster of several nodes. At most one per
    shard."""
    import os

    import ray

    if requested:
        return min(requested, len(tasks))
    if sum(file.stat().st_size for file in files) < RAY_DATA_MIN_BYTES:
        return 0
    nodes = [node for node in ray.nodes() if node.get("Alive")]
    cpus = int(ray.cluster_resources().get("CPU", 1)) if len(nodes) > 1 else (os.cpu_count() or 1)
    return max(1, min(len(tasks), cpus))
