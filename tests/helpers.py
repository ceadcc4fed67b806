"""What several test modules (and the synthesis benchmark) share: the small recipe and its data, the command
line in a subprocess, one stage run in-process (on the test session's Ray), and servers on loopback."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import tomllib
import urllib.request
from pathlib import Path
from typing import Sequence

import tomli_w

from eagle_recipes.graph.plan import compile_plan
from eagle_recipes.graph.progress import ProgressHub
from eagle_recipes.graph.runner import execute_stage
from eagle_recipes.recipe import load_recipe
from eagle_recipes.recipe.overrides import apply_overrides, parse_overrides
from eagle_recipes.run_folder import RunFolder

PROJECT = Path(__file__).resolve().parents[1]
CLI = [sys.executable, "-m", "eagle_recipes.cli"]


def cli_commands() -> set[str]:
    """The commands the CLI's own parser offers (tests that cover every command ask it, not a list of their own)."""
    import argparse

    from eagle_recipes.cli import build_parser

    return next(set(action.choices) for action in build_parser()._actions
                if isinstance(action, argparse._SubParsersAction))


def cli(*args, env=None, check=True, timeout=900) -> subprocess.CompletedProcess:
    result = subprocess.run([*CLI, *map(str, args)], capture_output=True, text=True, env=env, timeout=timeout)
    if check and result.returncode != 0:
        raise AssertionError(f"{args} failed ({result.returncode}):\n{result.stdout[-3000:]}\n{result.stderr[-5000:]}")
    return result


def plan_status(recipe: Path) -> dict[str, str]:
    plan = json.loads(cli("plan", recipe, "--json").stdout)
    return {stage["name"]: stage["status"] for stage in plan["stages"]}


def recipe_head(name: str, model: str, config: str = "", prompts: str = "prompts.jsonl") -> str:
    """The top of a test recipe: its name, output folder `out`, base model (with an offline config.json) and
    prompt file; the caller appends the tables it is about."""
    config_line = f'config = "{config}"\n' if config else ""
    return (f'name = "{name}"\noutput_dir = "out"\n[model]\npath = "{model}"\n{config_line}'
            f'[data]\nprompts = ["{prompts}"]\n')


def small_conversations(count: int = 40) -> list[dict]:
    """The small recipe's training data: short arithmetic exchanges."""
    return [{"conversations": [{"role": "user", "content": f"Question {i}: what is {i} plus {i}?"},
                               {"role": "assistant", "content": f"{i} plus {i} is {2 * i}. " * 3}]}
            for i in range(count)]


def with_overrides(text: str, overrides: Sequence[str]) -> str:
    """Recipe text with `KEY=VALUE` overrides set by the project's own override code, as `eagle-recipes run
    recipe.toml KEY=VALUE` sets them, written back as TOML (comments and layout dropped); the text as it is,
    byte for byte, when there are none."""
    if not overrides:
        return text
    parsed, problems = parse_overrides(overrides, "test recipe")
    table, misplaced = apply_overrides(tomllib.loads(text), parsed, "test recipe")
    if problems or misplaced:
        raise ValueError("; ".join(map(str, problems + misplaced)))
    return tomli_w.dumps(table)


def write_recipe(folder: Path, text: str, name: str = "recipe.toml", *, overrides: Sequence[str] = ()) -> Path:
    path = folder / name
    path.write_text(with_overrides(text, overrides), encoding="utf-8")
    return path


def override_recipe(path: Path, *overrides: str) -> Path:
    """Rewrite a recipe file with `KEY=VALUE` overrides set (see `with_overrides`)."""
    return write_recipe(path.parent, path.read_text(encoding="utf-8"), path.name, overrides=overrides)


def small_recipe(folder: Path, model: str, steps: int = 6, lr: str = "0.001", extra: str = "") -> Path:
    prompts = folder / "prompts.jsonl"
    if not prompts.exists():
        prompts.write_text("".join(json.dumps(r) + "\n" for r in small_conversations()))
    return write_recipe(folder, f"""
name = "graph"
output_dir = "out"
[model]
path = "{model}"
[data]
prompts = ["prompts.jsonl"]
[synthesis]
engine = "none"
batch_size = 8
[vocab]
draft_vocab_size = 300
[train]
max_steps = {steps}
lr = {lr}
ttt_steps = 2
max_seq_len = 128
checkpoint_every = 5
[eval]
enabled = false
{extra}
""")


def run_stage(recipe_path: Path, stage: str) -> dict:
    """Plan the recipe and run one stage like the graph runner does (resume included)."""
    recipe = load_recipe(recipe_path)
    plan = compile_plan(recipe)
    planned = plan.stage(stage)
    inputs = {d: str(RunFolder(Path(recipe.output_dir)).stage(d)) for d in planned.depends_on}
    return execute_stage(recipe, stage, planned.fingerprint, inputs, ProgressHub.remote())


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class VLLMServer:
    """A real `vllm serve` on 127.0.0.1 (the CPU build), started and stopped by the test."""

    def __init__(self, model: str, api_key: str, port: int | None = None):
        self.model, self.api_key, self.port = model, api_key, port or free_port()
        self.process: subprocess.Popen | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self, timeout: float = 240) -> "VLLMServer":
        env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1", "VLLM_CPU_NUM_OF_RESERVED_CPU": "1"}
        # the OpenAI server module: the `vllm serve` script looks up the "vllm" distribution, which the CPU
        # build (distributed as vllm-cpu) does not have
        command = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", self.model,
                   "--port", str(self.port),
                   "--host", "127.0.0.1", "--dtype", "float32", "--enforce-eager", "--max-model-len", "2048",
                   "--api-key", self.api_key, "--served-model-name", "base", "--gpu-memory-utilization", "0.3"]
        self.process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                        start_new_session=True)
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"vllm serve exited with {self.process.returncode}")
            try:
                request = urllib.request.Request(f"{self.base_url}/models",
                                                 headers={"Authorization": f"Bearer {self.api_key}"})
                with urllib.request.urlopen(request, timeout=2):
                    return self
            except OSError:
                time.sleep(1)
        raise TimeoutError("vllm serve did not come up")

    def kill(self) -> None:
        if self.process and self.process.poll() is None:
            os.killpg(self.process.pid, 9)
            self.process.wait()
