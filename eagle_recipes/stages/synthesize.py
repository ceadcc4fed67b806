"""Synthesize: the base model regenerates the assistant turns of the prompt conversations, turn by turn.

Each user turn is answered given the conversation so far, with the model's own earlier answers (not the
original ones). Work is cut into shards of `batch_size` conversations, each written atomically when finished,
so a re-run after a crash redoes at most the shards that were in flight. With engine "none" the prompt data is
only normalized into the same shard format.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from eagle_recipes.atomic import write_jsonl
from eagle_recipes.data.formats import load_conversations
from eagle_recipes.engines import OpenAIEngine, Sampling, VLLMEngines
from eagle_recipes.recipe import Recipe
from eagle_recipes.stages.base import Stage, StageContext
from eagle_recipes.stages.common import SHARDS, base_model_path, chat_template_file

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


def write_self_prompts(engine, tokenizer, recipe: Recipe, path: Path) -> list[dict]:
    """Have the model write `self_prompts` user prompts (deduplicated), or reuse the ones written before."""
    if path.exists():
        return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    wanted = recipe.synthesis.self_prompts
    prefix_ids = tokenizer(user_turn_prefix(tokenizer, recipe.synthesis.system_prompt),
                           add_special_tokens=False)["input_ids"]
    prompts: dict[str, None] = {}
    round_ = 0
    while len(prompts) < wanted and round_ < 8:  # dedup can leave us short: a few more rounds, then stop
        missing = wanted - len(prompts)
        sampling = Sampling(temperature=recipe.synthesis.self_prompt_temperature, top_p=1.0, max_tokens=96,
                            seed=recipe.synthesis.seed + round_, stop_at_newline=True)
        for reply in engine.generate([prefix_ids] * int(missing * 1.3 + 2), sampling):
            text = reply.text.strip()
            if 12 <= len(text) and not reply.truncated and text.lower() not in {p.lower() for p in prompts}:
                prompts[text] = None
        round_ += 1
    rows = [{"conversation_id": f"self-{i:06d}", "conversations": [{"role": "user", "content": text}],
             "source": "self_prompts"} for i, text in enumerate(list(prompts)[:wanted])]
    write_jsonl(path, rows)
    return rows


def regenerate(engine, tokenizer, conversations: list[dict], sampling: Sampling, system_prompt: str) -> list[dict]:
    """Answer every user turn of every conversation, round by round (round r = the r-th user turn)."""
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
            state["messages"].append({"role": "assistant", "content": reply.text})
            state["truncated"] |= reply.truncated
            state["tokens"] += reply.tokens
    return [{"conversation_id": c["conversation_id"], "conversations": s["messages"], "truncated": s["truncated"],
             "temperature": sampling.temperature, "source": c.get("source", ""), "generated_tokens": s["tokens"]}
            for c, s in zip(conversations, states)]


def _make_engine(recipe: Recipe, model_path: str, tokenizer):
    synthesis = recipe.synthesis
    if synthesis.engine == "vllm":
        return VLLMEngines(model_path, recipe.model.dtype, synthesis.replicas, synthesis.tensor_parallel_size,
                           dict(synthesis.engine_kwargs), synthesis.seed)
    settings = synthesis.openai
    return OpenAIEngine(settings.base_url, settings.model, settings.api_key_env, settings.concurrency,
                        settings.timeout_s, settings.max_retries, tokenizer)


class SynthesizeStage(Stage):
    name = "synthesize"
    description = "the base model regenerates the assistant turns (and writes self prompts)"

    @staticmethod
    def enabled(recipe: Recipe) -> tuple[bool, str]:
        if recipe.inputs.conversations:
            return False, "data.conversations supplies the training conversations"
        return True, ""

    @staticmethod
    def settings(recipe: Recipe) -> dict[str, Any]:
        synthesis = dict(recipe.data["synthesis"])
        if synthesis["engine"] != "openai":
            synthesis.pop("openai")
        return {"synthesis": synthesis, "model": recipe.data["model"],
                "data": {k: v for k, v in recipe.data["data"].items() if k != "holdout_fraction"}}

    @staticmethod
    def input_files(recipe: Recipe) -> list[Path]:
        return [recipe.resolve(p) for p in recipe.inputs.prompts]

    @staticmethod
    def outputs(recipe: Recipe) -> list[str]:
        return ["synthesize/shards/*.jsonl"]

    @staticmethod
    def resources(recipe: Recipe) -> dict[str, Any]:
        synthesis = recipe.synthesis
        if synthesis.engine == "vllm":
            per_engine = f"{synthesis.tensor_parallel_size} GPU (or 1 CPU)"
            return {"driver": {"num_cpus": 0.1}, "engines": f"{synthesis.replicas} x vLLM, {per_engine} each"}
        if synthesis.engine == "openai":
            return {"driver": {"num_cpus": 0.1}, "server": synthesis.openai.base_url}
        return {"driver": {"num_cpus": 0.1}}

    @staticmethod
    def run(ctx: StageContext) -> dict[str, Any]:
        from eagle_recipes.data.chat import load_tokenizer

        recipe, synthesis = ctx.recipe, ctx.recipe.synthesis
        loaded = load_conversations([recipe.resolve(p) for p in recipe.inputs.prompts], recipe.inputs.format,
                                    recipe.inputs.max_samples, recipe.inputs.shuffle_seed)
        for reason, count in loaded.skipped.items():
            ctx.log(f"skipped {count} input rows: {reason}")
        shards_dir = ctx.out / SHARDS
        shards_dir.mkdir(parents=True, exist_ok=True)
        if synthesis.engine == "none":
            return _normalize_only(ctx, loaded)
        model_path = base_model_path(recipe)
        tokenizer = load_tokenizer(model_path, chat_template_file(recipe), recipe.model.trust_remote_code)
        engine = _make_engine(recipe, model_path, tokenizer)
        started = time.time()
        try:
            conversations = loaded.conversations
            if synthesis.self_prompts:
                conversations = conversations + write_self_prompts(engine, tokenizer, recipe,
                                                                   ctx.out / "self_prompts.jsonl")
            work = [(t, conversations[i: i + synthesis.batch_size]) for t in temperatures(recipe)
                    for i in range(0, len(conversations), synthesis.batch_size)]
            done_before, generated, tokens, truncated = 0, 0, 0, 0
            for index, (temperature, chunk) in enumerate(work):
                shard = shards_dir / f"{index:05d}.jsonl"
                if shard.exists():
                    done_before += len(chunk)
                else:
                    sampling = Sampling(temperature, synthesis.top_p, synthesis.max_tokens, synthesis.seed)
                    rows = regenerate(engine, tokenizer, chunk, sampling, synthesis.system_prompt)
                    if len(temperatures(recipe)) > 1:  # one pass per temperature: ids stay unique
                        for row in rows:
                            row["conversation_id"] = f"{row['conversation_id']}@t{temperature:g}"
                    write_jsonl(shard, rows)
                    generated += len(rows)
                    tokens += sum(r["generated_tokens"] for r in rows)
                    truncated += sum(r["truncated"] for r in rows)
                ctx.progress(sum(len(c) for _, c in work[: index + 1]), sum(len(c) for _, c in work),
                             "conversations")
        finally:
            engine.close()
        wall = time.time() - started
        return {"counts": {"conversations": done_before + generated, "generated_this_run": generated,
                           "resumed_from_earlier_run": done_before, "truncated": truncated,
                           "generated_tokens": tokens, "skipped": dict(loaded.skipped),
                           "self_prompts": synthesis.self_prompts, "shards": len(work)},
                "metrics": {"tokens_per_s": tokens / wall if wall else 0.0, "conversations": done_before + generated,
                            "input_formats": loaded.formats}}


def _normalize_only(ctx: StageContext, loaded) -> dict[str, Any]:
    size = ctx.recipe.synthesis.batch_size
    conversations = loaded.conversations
    for index in range(0, len(conversations), size):
        write_jsonl(ctx.out / SHARDS / f"{index // size:05d}.jsonl", conversations[index: index + size])
    return {"counts": {"conversations": len(conversations), "skipped": dict(loaded.skipped)},
            "metrics": {"conversations": len(conversations), "input_formats": loaded.formats}}
