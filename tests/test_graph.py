"""The task graph on Ray: plan offline, skip what is up to date, re-run exactly what a change affects, resume
after the driver is SIGKILLed mid-stage with nothing lost or redone."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from eagle_recipes.run_folder import CALIBRATE, EXPORT, SYNTHESIZE, TOKENIZE, TRAIN, RunFolder
from tests.helpers import CLI, PROJECT, cli, plan_status, small_recipe

pytestmark = pytest.mark.slow  # real processes, engines or graph runs: `make test-fast` leaves these out

ALL_RECIPES = sorted((PROJECT / "recipes").glob("*.toml")) + sorted((PROJECT / "catalog").glob("*/*.toml"))


# every recipe planned by the CLI's own `main`, in one offline process (one start-up instead of one per recipe)
PLAN_ALL = """
import sys
from eagle_recipes.cli import main
for recipe in sys.argv[1:]:
    print(f"=== {recipe}", flush=True)
    print(f"=== exit {main(['plan', recipe, '--json'])}", flush=True)
"""

# the graph's stages in order, written out here: a stage the planner drops is then neither planned nor left out
STAGES = ["synthesize", "tokenize", "calibrate", "capture", "train", "export", "evaluate"]


def recipe_value(recipe: Path, key: str):
    """A recipe's value for a dotted key, the schema's default where the file does not set it."""
    import tomllib

    value, schema = tomllib.loads(recipe.read_text()), json.loads((PROJECT / "schemas/recipe.schema.json").read_text())
    for part in key.split("."):
        schema = schema["properties"][part]
        value = value.get(part, {}) if isinstance(value, dict) else {}
    return value if value != {} else schema.get("default")


def test_plan_every_shipped_recipe_offline(tmp_path):
    env = {**os.environ, "EAGLE_RECIPES_CACHE": str(tmp_path / "empty-cache"), "HF_HUB_OFFLINE": "1"}
    result = subprocess.run([sys.executable, "-c", PLAN_ALL, *map(str, ALL_RECIPES)], capture_output=True, text=True,
                            env=env, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    outputs = result.stdout.split("=== ")[1:]
    assert len(outputs) == 2 * len(ALL_RECIPES), result.stdout[-3000:]
    for recipe, out, code in zip(ALL_RECIPES, outputs[0::2], outputs[1::2]):
        assert code.strip() == "exit 0", f"{recipe.name}: plan failed:\n{out[-2000:]}\n{result.stderr[-2000:]}"
        plan = json.loads(out.split("\n", 1)[1])
        planned, left_out = [stage["name"] for stage in plan["stages"]], plan["left_out"]
        # every stage is planned, in the graph's order, or left out with the recipe setting that turns it off
        assert planned == [name for name in STAGES if name not in left_out], (recipe.name, planned, left_out)
        assert {"synthesize", "train", "export"} <= set(planned), (recipe.name, planned)
        for name, why in left_out.items():  # 'key = value (...)' or 'key is set (...)', true of this recipe
            setting = why.split(" (")[0]
            key, value = setting.split(" = ") if " = " in setting else (setting.removesuffix(" is set"), None)
            held = recipe_value(recipe, key)
            assert (held == json.loads(value)) if value else held, f"{recipe.name}: {name} left out because {why}"
    assert not any((tmp_path / "empty-cache").rglob("*.safetensors")), "plan downloaded a model"


def test_cache_skip_and_exactly_the_affected_stages_rerun(tmp_path, tiny_llama):
    recipe = small_recipe(tmp_path, tiny_llama)
    assert plan_status(recipe) == dict.fromkeys(["synthesize", "tokenize", "calibrate", "train", "export"], "run")
    first = cli("run", recipe)
    assert set(plan_status(recipe).values()) == {"up to date"}
    output = first.stdout + first.stderr  # not a terminal: one plain line per change, no workers' noise
    for stage in ("tokenize", "calibrate", "train"):
        assert f"[{stage}] running" in output and f"[{stage}] done in" in output, output
    assert "/10 steps" in output or "/6 steps" in output, output
    assert "Failed to query" not in output and "(pid=" not in output and "Token authentication" not in output
    started = time.time()
    again = cli("run", recipe)
    assert time.time() - started < 60 and again.stdout.count("up to date") >= 5
    run = RunFolder(tmp_path / "out")
    before = {s: json.loads(run.manifest_file(s).read_text())["finished_at"]
              for s in (SYNTHESIZE, TOKENIZE, CALIBRATE, TRAIN, EXPORT)}
    # each stage task's own peak memory, counted by the kernel from the task's start (not sampled)
    assert all(json.loads(run.manifest_file(s).read_text())["peak_rss_mib"] > 50 for s in before)
    small_recipe(tmp_path, tiny_llama, lr="0.002")  # a training setting: train and what follows
    assert plan_status(recipe) == {"synthesize": "up to date", "tokenize": "up to date", "calibrate": "up to date",
                                   "train": "run", "export": "run"}
    cli("run", recipe)
    after = {s: json.loads(run.manifest_file(s).read_text())["finished_at"] for s in before}
    assert all(after[stage] == before[stage] for stage in ("synthesize", "tokenize", "calibrate"))
    assert after["train"] > before["train"] and after["export"] > before["export"]
    small_recipe(tmp_path, tiny_llama, lr="0.002", extra="[export]\ndtype = \"float32\"\n")  # export alone
    assert plan_status(recipe) == {"synthesize": "up to date", "tokenize": "up to date", "calibrate": "up to date",
                                   "train": "up to date", "export": "run"}
    with open(tmp_path / "prompts.jsonl", "a") as handle:  # the data: everything downstream of it
        handle.write(json.dumps({"prompt": "one more"}) + "\n")
    assert set(plan_status(recipe).values()) == {"run"}
    summary = json.loads(run.summary_file.read_text())
    assert summary["ok"] and set(summary["stages"]) == set(before)


def test_sigkill_mid_training_resumes_to_identical_artifacts(tmp_path, tiny_llama):
    reference, interrupted = tmp_path / "reference", tmp_path / "interrupted"
    reference.mkdir()
    interrupted.mkdir()
    cli("run", small_recipe(reference, tiny_llama, steps=30))
    recipe = small_recipe(interrupted, tiny_llama, steps=30)
    driver = subprocess.Popen([*CLI, "run", str(recipe)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    run = RunFolder(interrupted / "out")
    checkpoint = run.checkpoint(10)
    deadline = time.time() + 600
    while not checkpoint.exists() and time.time() < deadline and driver.poll() is None:
        time.sleep(0.05)
    assert checkpoint.exists(), "training never reached step 10"
    os.kill(driver.pid, signal.SIGKILL)
    driver.wait()
    assert not run.manifest_file(TRAIN).exists()
    time.sleep(3)  # let Ray notice the dead driver and stop its workers
    cli("run", recipe)
    manifest = json.loads(run.manifest_file(TRAIN).read_text())
    resumed = manifest["counts"]["resumed_from_step"]
    assert resumed >= 10 and manifest["counts"]["steps"] == 30
    assert manifest["counts"]["steps_this_run"] == 30 - resumed  # finished steps were not trained again
    synth = json.loads(run.manifest_file(SYNTHESIZE).read_text())
    assert synth["finished_at"] < manifest["started_at"]  # the finished stage was not redone
    ours = (run.draft / "model.safetensors").read_bytes()
    theirs = (RunFolder(reference / "out").draft / "model.safetensors").read_bytes()
    assert ours == theirs, "the resumed run's draft differs from the uninterrupted run's"
    metrics = run.metrics.read_text().splitlines()
    assert [json.loads(line)["step"] for line in metrics] == list(range(1, 31))
