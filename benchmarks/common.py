"""Shared by the benchmarks: the real small model and conversations to measure on, and the quick mode every
benchmark has (`--quick`: seconds, on any small model given with `--model`; the test suite runs each one so on a
tiny random Llama, so that a signature change fails CI instead of the next measurement)."""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

PROJECT = Path(__file__).resolve().parents[1]
from eagle_recipes.models import SMOLLM2  # noqa: E402,F401 (tests and benchmarks import it from here)
PROMPTS = PROJECT / "recipes" / "data" / "quickstart_prompts.jsonl"


def add_quick_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--quick", action="store_true",
                        help="a few seconds' worth of each measurement: checks that the benchmark runs, not a figure")
    parser.add_argument("--model", default=SMOLLM2, help="base model (default: SmolLM2-135M-Instruct)")


def hardware() -> str:
    """What the figures were measured on (every benchmark prints it beside its figures): the CPU capability torch
    dispatches to and whether bfloat16 is native, or the GPU."""
    import torch

    from eagle_recipes.devices import available_device, describe_hardware

    return f"{describe_hardware(available_device())}, {torch.get_num_threads()} threads"


def model_path(model: str = SMOLLM2) -> str:
    from eagle_recipes.models import resolve_model

    return resolve_model(model)


def model_name(model: str) -> str:
    return "SmolLM2-135M" if model == SMOLLM2 else Path(model).name


def prompts(count: int) -> list[str]:
    rows = [json.loads(line)["prompt"] for line in PROMPTS.read_text().splitlines()]
    return (rows * (count // len(rows) + 1))[:count]


def conversations(count: int, seed: int = 0) -> list[dict]:
    """Deterministic multi-turn conversations built from the quickstart prompts (answers are reshuffled words
    of the prompts, so the text has a realistic token mix without running a model)."""
    rng = random.Random(seed)
    words = " ".join(prompts(300)).split()
    rows = []
    for index in range(count):
        turns = []
        for _ in range(rng.randint(1, 3)):
            turns.append({"role": "user", "content": rng.choice(prompts(300))})
            turns.append({"role": "assistant", "content": " ".join(rng.choices(words, k=rng.randint(40, 160)))})
        rows.append({"conversation_id": f"bench-{index}", "conversations": turns})
    return rows


def build_tiny_target(folder: Path) -> Path:
    """A random 6-layer, 64-wide Llama with SmolLM2's tokenizer: the graph's shapes at a few seconds a stage."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from eagle_recipes.models import resolve_model

    tokenizer = AutoTokenizer.from_pretrained(resolve_model(SMOLLM2))
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=6,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048,
                         tie_word_embeddings=False, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id, bos_token_id=1)
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder
