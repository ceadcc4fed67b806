"""The quickstart, reduced (fewer prompts, fewer steps), end to end on the real model with real vLLM and real
Ray: synthesize -> calibrate -> train -> export -> evaluate, then a re-run that finds every stage up to date."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import pytest
import tomli_w

from eagle_recipes.run_folder import REPORT_PLOT, RunFolder
from tests.helpers import PROJECT, write_recipe

pytestmark = pytest.mark.slow  # real processes, engines or graph runs: `make test-fast` leaves these out

CLI = [sys.executable, "-m", "eagle_recipes.cli"]


def reduced_quickstart(folder: Path) -> Path:
    """The quickstart with fewer prompts, steps and evaluation, its paths absolute, its run in `folder`/run."""
    recipes = PROJECT / "recipes"
    quickstart = tomllib.loads((recipes / "quickstart.toml").read_text(encoding="utf-8"))
    del quickstart["tune"]  # the reduced run is `run`, never `tune`
    return write_recipe(folder, tomli_w.dumps(quickstart), "quickstart-reduced.toml", overrides=[
        f'output_dir="{folder / "run"}"',
        f'data.prompts=["{recipes / "data/quickstart_prompts.jsonl"}"]',
        f'model.config="{PROJECT / "catalog/smollm2/configs/SmolLM2-135M-Instruct.json"}"',
        "data.max_samples=30", "synthesis.self_prompts=6", "synthesis.max_tokens=48", "synthesis.batch_size=16",
        "train.max_steps=24", "train.checkpoint_every=12",
        'eval.prompts=["mt-bench", "holdout"]', "eval.num_speculative_tokens=5", "eval.max_tokens=40",
        "eval.max_prompts=8", "eval.speed.concurrency=[1, 4]", "eval.speed.prompts=4", "eval.speed.max_tokens=16",
        # one k and one repeat: an engine per k costs a minute on 2 cores
        "eval.speed.draft_tokens=[2]", "eval.speed.repeats=1"])


def test_reduced_quickstart_end_to_end(tmp_path, smollm2_path):
    recipe = reduced_quickstart(tmp_path)
    run = RunFolder(tmp_path / "run")
    first = subprocess.run([*CLI, "run", str(recipe)], capture_output=True, text=True, timeout=1800)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-5000:]
    assert re.search(r"acceptance length tau = \d\.\d+ at k = 5 draft tokens", first.stdout), first.stdout[-2000:]
    report = json.loads(run.report.read_text())
    assert report["headline_set"] == "mt-bench" and report["sets"]["mt-bench"]["prompts"] == 8
    assert 1.0 <= report["acceptance_length"] <= 6.0 and len(report["per_position"]) == 5
    assert report["sets"]["mt-bench"]["lossless"], report["sets"]["mt-bench"]["identical_outputs"]
    assert run.report_plot.exists()
    # the serving-speed sweep: the base alone and k = 2 at loads 1 and 4, the fastest of each load recommended
    speed = report["speed"]
    assert [(r["k"], r["concurrency"]) for r in speed["rows"]] == [(k, c) for k in (0, 2) for c in (1, 4)]
    for load in ("1", "4"):
        rows = [r for r in speed["rows"] if r["concurrency"] == int(load)]
        assert speed["recommended"][load]["tokens_per_s"] == max(r["tokens_per_s"] for r in rows)
    assert re.search(r"(fastest: k = \d at load \d|no k beats the base alone)", first.stdout), first.stdout[-2000:]
    # the model card: export's knows the draft, evaluate's adds what was measured
    exported = (run.draft / "README.md").read_text()
    assert "# EAGLE-3 draft for SmolLM2-135M-Instruct" in exported and "Not measured yet" in exported
    assert "## Training" in exported and "24 steps" in exported and "vllm serve" in exported
    assert "sglang.launch_server" not in exported  # its Qwen3-style draft layer does not load in SGLang
    card = (run.card / "README.md").read_text()
    tau = report["sets"]["mt-bench"]["acceptance_length"]
    assert f"| mt-bench | 8 | {tau:.3f} |" in card and "8/8" in card
    assert "## Serving speed" in card and "| base alone |" in card
    assert (run.card / REPORT_PLOT).exists()
    inspect = subprocess.run([*CLI, "inspect", str(run.draft)], capture_output=True, text=True)
    assert inspect.returncode == 0 and "OK" in inspect.stdout
    started = time.time()
    again = subprocess.run([*CLI, "run", str(recipe)], capture_output=True, text=True, timeout=600)
    assert again.returncode == 0 and time.time() - started < 60
    summary = json.loads(run.summary_file.read_text())
    assert {s["status"] for s in summary["stages"].values()} == {"up to date"}
