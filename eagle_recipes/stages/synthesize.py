"""Synthesize: the base model regenerates the assistant turns of the prompt conversations, turn by turn.

Each user turn is answered given the conversation so far, with the model's own earlier answers (not the
original ones). Work is cut into shards of `batch_size` conversations (and shards of self prompts, which the
model first writes and then answers), each written atomically when finished, so a re-run after a crash redoes at
most the shards that were in flight. The vllm engine runs the shards in Ray Data actors that each hold one engine
for the whole pass; the openai engine sends each shard's requests concurrently from here. With engine "none" the
prompt data is only normalized into the same shard format.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterator, Protocol

from eagle_recipes.atomic import write_jsonl
from eagle_recipes.data.chat import strip_thinking
from eagle_recipes.data.conversation_store import ConversationStore, rows_at
from eagle_recipes.data.formats import SELF_PROMPTS_SOURCE, DataFormatError, load_conversations
from eagle_recipes.data.sources import Source
from eagle_recipes.engines.actor_pool import TaskActor
from eagle_recipes.engines.generation import OpenAIEngine, Sampling
from eagle_recipes.recipe import Recipe
from eagle_recipes.stages.base import Stage, StageContext
from eagle_recipes.run_folder import CONVERSATION_SHARDS, PROMPT_STORE, RELATIVE, SYNTHESIZE
from eagle_recipes.recipe.base_model import base_model_path, chat_template_file, load_recipe_tokenizer, thinking_when_generating

SENTINEL = "\u2063EAGLE_RECIPES_USER_TURN\u2063"


def temperatures(recipe: Recipe) -> list[float]:
    value = recipe.synthesis.temperature
    return [float(t) for t in value] if isinstance(value, list) else [float(value)]


def user_turn_prefix(tokenizer, system_prompt: str) -> str:
    """The text a chat template puts before a user's words (Magpie: the model continues it with a prompt)."""
    messages = ([{"role": "system", "content": system_prompt}] if system_prompt else []) + \
        [{"role": "user", "content": SENTINEL}]
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=False)
    return text[: text.index(SENTINEL)]


def self_prompt_conversations(engine, prefix_ids: list[int], count: int, first_id: int,
                              sampling: Sampling) -> list[dict]:
    """Have the model write up to `count` user prompts (Magpie: it continues the chat template's user-turn
    prefix), deduplicated; each becomes a one-turn conversation to answer. A few spare candidates make up for
    duplicates and unusable ones (too short, or cut by the token limit)."""
    prompts: dict[str, None] = {}
    for reply in engine.generate([prefix_ids] * int(count * 1.5 + 4), sampling):
        text = reply.text.strip()
        if 12 <= len(text) and not reply.truncated and text.lower() not in {p.lower() for p in prompts}:
            prompts[text] = None
    return [{"conversation_id": f"self-{first_id + i:06d}", "conversations": [{"role": "user", "content": text}],
             "source": SELF_PROMPTS_SOURCE} for i, text in enumerate(list(prompts)[:count])]


def regenerate(engine, tokenizer, conversations: list[dict], sampling: Sampling, system_prompt: str,
               drop_thinking: bool = False) -> list[dict]:
    """Answer every user turn of every conversation, round by round (round r = the r-th user turn); with
    `drop_thinking`, replies are kept (and shown to later rounds) without their <think> blocks."""
    states = []
    for conversation in conversations:
        turns = conversation["conversations"]
        messages = [t for t in turns if t["role"] == "system"][:1]
        if not messages and system_prompt:
            messages = [{"role": "system", "content": system_prompt}]
        users = [t["content"] for t in turns if t["role"] == "user"]
        states.append({"messages": messages, "users": users, "truncated": False, "tokens": 0})
    rounds = max((len(s["users"]) for s in states), default=0)
    for round_ in range(rounds):
        active = [s for s in states if len(s["users"]) > round_]
        prompts = []
        for state in active:
            state["messages"].append({"role": "user", "content": state["users"][round_]})
            text = tokenizer.apply_chat_template(state["messages"], tokenize=False, add_generation_prompt=True)
            prompts.append(tokenizer(text, add_special_tokens=False)["input_ids"])
        for state, reply in zip(active, engine.generate(prompts, sampling)):
            state["messages"].append({"role": "assistant",
                                      "content": strip_thinking(reply.text) if drop_thinking else reply.text})
            state["truncated"] |= reply.truncated
            state["tokens"] += reply.tokens
    return [{"conversation_id": c["conversation_id"], "conversations": s["messages"], "truncated": s["truncated"],
             "temperature": sampling.temperature, "source": c.get("source", ""), "generated_tokens": s["tokens"]}
            for c, s in zip(conversations, states)]


def task_conversations(task: dict) -> list[dict]:
    """A shard's prompt conversations, read from the prompt store where the task names them by offset (a task
    carries offsets, not conversations: the driver never holds every prompt at once)."""
    return rows_at(task["prompts"], task["offsets"]) if task["offsets"] else []


def run_task(engine, tokenizer, task: dict) -> dict:
    """One shard of synthesis on an engine: regenerate its conversations; for a self-prompt shard, first have the
    model write the prompts (so one engine start serves both)."""
    conversations = task_conversations(task)
    if task["kind"] == "self_prompts":
        conversations = self_prompt_conversations(engine, task["prefix_ids"], task["count"], task["first_id"],
                                                  Sampling(**task["prompt_sampling"]))
    rows = regenerate(engine, tokenizer, conversations, Sampling(**task["sampling"]), task["system_prompt"],
                      task.get("drop_thinking", False))
    for row in rows:
        row["conversation_id"] += task["id_suffix"]
    return {"shard": task["shard"], "rows": rows}


class SynthesisActor(TaskActor):
    """Ray Data actor: holds one vLLM engine for the whole pass and runs the tasks of its batches on it."""

    def __init__(self, engine_args: dict, model_path: str, template_file: str, trust_remote_code: bool,
                 thinking: bool | None):
        import ray

        from eagle_recipes.data.chat import load_tokenizer
        from eagle_recipes.engines.generation import VLLMGenerator

        self.engine = VLLMGenerator(**engine_args)
        self.tokenizer = load_tokenizer(model_path, template_file, trust_remote_code, thinking)
        self.engine_id = ray.get_runtime_context().get_actor_id()

    def run_task(self, task: dict) -> dict:
        started = time.perf_counter()
        result = run_task(self.engine, self.tokenizer, task)
        return {**result, "engine": self.engine_id, "seconds": time.perf_counter() - started}


class TaskRunner(Protocol):
    def run(self, tasks: list[dict]) -> Iterator[dict]: ...


@dataclass
class RayDataRunner:
    """vLLM through Ray Data: the tasks become a dataset, `replicas` actors each hold an engine (data parallel over
    GPUs and nodes), and results stream back as each task finishes. One engine start per actor per pass."""

    engine_args: dict
    model_path: str
    template_file: str
    trust_remote_code: bool
    replicas: int
    thinking: bool | None = None  # the chat template's reasoning switch while generating

    def run(self, tasks: list[dict]) -> Iterator[dict]:
        from eagle_recipes.engines.actor_pool import run_in_actor_pool
        from eagle_recipes.engines.placement import cluster_has_gpus, engine_placement

        placement = engine_placement(self.engine_args["tensor_parallel_size"], cluster_has_gpus())
        actor_kwargs = dict(engine_args=self.engine_args, model_path=self.model_path,
                            template_file=self.template_file, trust_remote_code=self.trust_remote_code,
                            thinking=self.thinking)
        yield from run_in_actor_pool(SynthesisActor, tasks, self.replicas, actor_kwargs, placement)


@dataclass
class LocalRunner:
    """An OpenAI-compatible server: tasks run here one after another; the engine sends each round's requests
    concurrently."""

    engine: Any
    tokenizer: Any

    def run(self, tasks: list[dict]) -> Iterator[dict]:
        for task in tasks:
            yield run_task(self.engine, self.tokenizer, task)


def shard_tasks(recipe: Recipe, conversations: ConversationStore, tokenizer) -> list[dict]:
    """Every shard of the stage, in a fixed order (shard i is always the same work, so a re-run resumes): for each
    temperature, the prompt conversations in chunks of batch_size, then the self prompts in chunks."""
    synthesis = recipe.synthesis
    several = len(temperatures(recipe)) > 1
    prefix_ids = tokenizer(user_turn_prefix(tokenizer, synthesis.system_prompt),
                           add_special_tokens=False)["input_ids"] if synthesis.self_prompts else []
    # (temperature, offsets of the conversations in the prompt store, self prompts to write, id of the first of them)
    chunks: list[tuple[float, list[int], int, int]] = []
    for temperature in temperatures(recipe):
        chunks += [(temperature, conversations.offsets_of(i, i + synthesis.batch_size), 0, 0)
                   for i in range(0, len(conversations), synthesis.batch_size)]
        chunks += [(temperature, [], min(synthesis.batch_size, synthesis.self_prompts - i), i)
                   for i in range(0, synthesis.self_prompts, synthesis.batch_size)]
    tasks = []
    for index, (temperature, chunk, self_count, first_id) in enumerate(chunks):
        # one seed range per shard: a re-run samples each shard as the first run did
        seed = synthesis.seed + index * 100_003
        task = {"kind": "self_prompts" if self_count else "shard", "prompts": str(conversations.path),
                "offsets": chunk,
                "expected": self_count or len(chunk), "system_prompt": synthesis.system_prompt,
                "sampling": asdict(Sampling(temperature, synthesis.top_p, synthesis.max_tokens, seed)),
                "id_suffix": f"@t{temperature:g}" if several else "",  # one pass per temperature: ids stay unique
                "drop_thinking": synthesis.reasoning == "strip"}
        if self_count:
            task.update(prefix_ids=prefix_ids, count=self_count, first_id=first_id,
                        prompt_sampling=asdict(Sampling(synthesis.self_prompt_temperature, 1.0, 96, seed + 50_000,
                                                        stop_at_newline=True)))
        tasks.append(task)
    return tasks


def whole_shard_rows(path: Path, task: dict) -> int | None:
    """Rows of a shard an earlier run wrote, or None when it is missing or not exactly the task's output (a cut
    line, a conversation of another shard): such a shard is written again, never read as if whole."""
    try:
        rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        ids = [row["conversation_id"] for row in rows]
    except (OSError, UnicodeDecodeError, ValueError, TypeError, KeyError):
        return None
    suffix = task["id_suffix"]
    if task["kind"] == "self_prompts":  # up to `count` prompts survive deduplication, numbered from first_id
        expected = [f"self-{task['first_id'] + i:06d}{suffix}" for i in range(len(rows))]
        return len(rows) if rows and ids == expected and len(rows) <= task["count"] else None
    expected = [c["conversation_id"] + suffix for c in task_conversations(task)]
    return len(rows) if ids == expected else None


def _make_runner(recipe: Recipe, model_path: str, tokenizer) -> TaskRunner:
    synthesis = recipe.synthesis
    if synthesis.engine == "vllm":
        engine_args = dict(model=model_path, dtype=recipe.model.dtype,
                           tensor_parallel_size=synthesis.tensor_parallel_size,
                           engine_kwargs=dict(synthesis.engine_kwargs), seed=synthesis.seed)
        return RayDataRunner(engine_args, model_path, chat_template_file(recipe), recipe.model.trust_remote_code,
                             synthesis.replicas, thinking_when_generating(recipe))
    settings = synthesis.openai
    return LocalRunner(OpenAIEngine(settings.base_url, settings.model, settings.api_key_env, settings.concurrency,
                                    settings.timeout_s, settings.max_retries, tokenizer), tokenizer)


def describe_sources(sources: list[Source]) -> str:
    """The prompt sources as plan shows them, with their row counts where known offline."""
    return "sources: " + "; ".join(source.describe() for source in sources)


def skipped_by_source(loaded) -> dict[str, int]:
    return {f"{source}: {reason}": count for (source, reason), count in loaded.by_source.items()}


def source_records(sources: list[Source], loaded) -> list[dict]:
    """What the manifest keeps of each source: its conversations used and, for a Hub dataset, the commit read."""
    return [{"source": source.label, "conversations": loaded.used.get(source.label, 0), **source.record()}
            for source in sources]


class SynthesizeStage(Stage):
    name = SYNTHESIZE
    description = "the base model regenerates the assistant turns (and writes self prompts)"
    headline_metric = "conversations"

    @staticmethod
    def enabled(recipe: Recipe) -> tuple[bool, str]:
        if recipe.dataset.conversations:  # the recipe's own conversations replace it
            return False, "data.conversations is set (the recipe's own conversations are trained on)"
        return True, ""

    @staticmethod
    def settings(recipe: Recipe) -> dict[str, Any]:
        synthesis = dict(recipe.data["synthesis"])
        if synthesis["engine"] != "openai":
            synthesis.pop("openai")
        if synthesis.get("reasoning") == "keep":  # the default: fingerprints of runs from before it stay valid
            synthesis.pop("reasoning")
        return {"synthesis": synthesis, "model": recipe.data["model"],
                "data": {k: v for k, v in recipe.data["data"].items() if k != "holdout_fraction"}}

    @staticmethod
    def input_files(recipe: Recipe) -> list[Path]:
        """Prompt files, and every data file of a local dataset folder (Hub datasets: their revision setting)."""
        files = []
        for source in recipe.prompt_sources():
            files += source.input_files()
        return files

    @staticmethod
    def outputs(recipe: Recipe) -> list[str]:
        return [f"{RELATIVE.conversations}/*.jsonl"]

    @staticmethod
    def describe_resources(recipe: Recipe) -> list[str]:
        synthesis = recipe.synthesis
        lines = [describe_sources(recipe.prompt_sources())] if recipe.dataset.prompts else []
        if synthesis.engine == "vllm":
            per_engine = f"{synthesis.tensor_parallel_size} GPU (or 1 CPU)"
            lines.append(f"engines: {synthesis.replicas} x vLLM, {per_engine} each")
        elif synthesis.engine == "openai":
            lines.append(f"server: {synthesis.openai.base_url}")
        return lines

    @staticmethod
    def run(ctx: StageContext) -> dict[str, Any]:
        recipe, synthesis = ctx.recipe, ctx.recipe.synthesis
        sources = recipe.prompt_sources()
        loaded = load_conversations(sources, recipe.dataset.format, recipe.dataset.max_samples,
                                    recipe.dataset.shuffle_seed, ctx.out / PROMPT_STORE)
        for line in loaded.skipped_lines():
            ctx.log(line)
        if not loaded.conversations and not synthesis.self_prompts:
            names = ", ".join(source.location for source in sources)
            raise DataFormatError(f"{names}: no usable conversation (" + "; ".join(loaded.skipped_lines())
                                  + "); each row needs a user turn")
        (ctx.out / CONVERSATION_SHARDS).mkdir(parents=True, exist_ok=True)
        try:
            return _normalize_only(ctx, loaded) if synthesis.engine == "none" else _generate(ctx, loaded)
        finally:  # the shards hold every conversation now; a re-run reads the sources again
            shutil.rmtree(ctx.out / PROMPT_STORE, ignore_errors=True)


def _generate(ctx: StageContext, loaded) -> dict[str, Any]:
    """The shards of work (resuming the finished ones), run on the recipe's engine."""
    recipe, synthesis = ctx.recipe, ctx.recipe.synthesis
    shards_dir = ctx.out / CONVERSATION_SHARDS
    model_path = base_model_path(recipe)
    tokenizer = load_recipe_tokenizer(recipe, model_path, thinking_when_generating(recipe))
    runner = _make_runner(recipe, model_path, tokenizer)
    started = time.time()
    planned = shard_tasks(recipe, loaded.conversations, tokenizer)
    tasks, done_before, total = [], 0, 0
    for index, task in enumerate(planned):
        shard = shards_dir / f"{index:05d}.jsonl"
        total += task["expected"]
        rows = whole_shard_rows(shard, task)
        if rows is not None:  # written whole by an earlier run: resumed, not redone
            done_before += rows
        else:
            if shard.exists():
                ctx.log(f"shard {shard.name} is damaged (a cut or foreign row): writing it again")
                shard.unlink()
            tasks.append({**task, "shard": index})
    ctx.progress(done_before, total, "conversations")
    generated, tokens, truncated, engines = 0, 0, 0, set()
    for result in runner.run(tasks):
        engines.add(result.get("engine", "local"))
        rows = result["rows"]
        write_jsonl(shards_dir / f"{result['shard']:05d}.jsonl", rows)
        generated += len(rows)
        tokens += sum(r["generated_tokens"] for r in rows)
        truncated += sum(r["truncated"] for r in rows)
        ctx.progress(done_before + generated, total, "conversations")
    wall = time.time() - started
    return {"counts": {"conversations": done_before + generated, "generated_this_run": generated,
                       "resumed_from_earlier_run": done_before, "truncated": truncated,
                       "generated_tokens": tokens, "skipped": dict(loaded.skipped),
                       "skipped_by_source": skipped_by_source(loaded),
                       "self_prompts": synthesis.self_prompts,
                       "shards": len(planned),
                       "engines_used": len(engines)},
            "metrics": {"tokens_per_s": tokens / wall if wall else 0.0, "conversations": done_before + generated,
                        "input_formats": loaded.formats,
                        "sources": source_records(ctx.recipe.prompt_sources(), loaded)}}


def _normalize_only(ctx: StageContext, loaded) -> dict[str, Any]:
    size = ctx.recipe.synthesis.batch_size
    conversations = loaded.conversations
    for index in range(0, len(conversations), size):
        write_jsonl(ctx.out / CONVERSATION_SHARDS / f"{index // size:05d}.jsonl", conversations[index: index + size])
    return {"counts": {"conversations": len(conversations), "skipped": dict(loaded.skipped),
                       "skipped_by_source": skipped_by_source(loaded)},
            "metrics": {"conversations": len(conversations), "input_formats": loaded.formats,
                            "sources": source_records(ctx.recipe.prompt_sources(), loaded)}}
