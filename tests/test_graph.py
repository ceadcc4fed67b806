"""The task graph on Ray: plan offline, skip what is up to date, re-run exactly what a change affects, resume
after the driver is SIGKILLed mid-stage with nothing lost or redone."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

from tests.helpers import CLI, PROJECT, cli, plan_status, small_recipe

ALL_RECIPES = sorted((PROJECT / "recipes").glob("*.toml")) + sorted((PROJECT / "catalog").glob("*/*.toml"))


# every recipe planned by the CLI's own `main`, in one offline process (one start-up instead of one per recipe)
PLAN_ALL = """
import sys
from eagle_recipes.cli import main
for recipe in sys.argv[1:]:
    print(f"=== {recipe}", flush=True)
    print(f"=== exit {main(['plan', recipe])}", flush=True)
"""


def test_plan_every_shipped_recipe_offline(tmp_path):
    env = {**os.environ, "EAGLE_RECIPES_CACHE": str(tmp_path / "empty-cache"), "HF_HUB_OFFLINE": "1"}
    result = subprocess.run([sys.executable, "-c", PLAN_ALL, *map(str, ALL_RECIPES)], capture_output=True, text=True,
                            env=env, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    outputs = result.stdout.split("=== ")[1:]
    assert len(outputs) == 2 * len(ALL_RECIPES), result.stdout[-3000:]
    for recipe, out, code in zip(ALL_RECIPES, outputs[0::2], outputs[1::2]):
        assert code.strip() == "exit 0", f"{recipe.name}: plan failed:\n{out[-2000:]}\n{result.stderr[-2000:]}"
        for stage in ("synthesize", "calibrate", "train", "export", "evaluate"):
            assert stage in out, f"{recipe.name}: {stage} missing from the plan"
    assert not any((tmp_path / "empty-cache").rglob("*.safetensors")), "plan downloaded a model"


def test_cache_skip_and_exactly_the_affected_stages_rerun(tmp_path, tiny_llama):
    recipe = small_recipe(tmp_path, tiny_llama)
    assert plan_status(recipe) == dict.fromkeys(["synthesize", "calibrate", "train", "export"], "run")
    first = cli("run", recipe)
    assert set(plan_status(recipe).values()) == {"up to date"}
    output = first.stdout + first.stderr  # not a terminal: one plain line per change, no workers' noise
    for stage in ("calibrate", "train"):
        assert f"[{stage}] running" in output and f"[{stage}] done in" in output, output
    assert "/10 steps" in output or "/6 steps" in output, output
    assert "Failed to query" not in output and "(pid=" not in output and "Token authentication" not in output
    started = time.time()
    again = cli("run", recipe)
    assert time.time() - started < 60 and again.stdout.count("up to date") >= 4
    before = {s: json.loads((tmp_path / "out" / s / "stage.json").read_text())["finished_at"]
              for s in ("synthesize", "calibrate", "train", "export")}
    small_recipe(tmp_path, tiny_llama, lr="0.002")  # a training setting: train and what follows
    assert plan_status(recipe) == {"synthesize": "up to date", "calibrate": "up to date", "train": "run",
                                   "export": "run"}
    cli("run", recipe)
    after = {s: json.loads((tmp_path / "out" / s / "stage.json").read_text())["finished_at"] for s in before}
    assert after["synthesize"] == before["synthesize"] and after["calibrate"] == before["calibrate"]
    assert after["train"] > before["train"] and after["export"] > before["export"]
    small_recipe(tmp_path, tiny_llama, lr="0.002", extra="[export]\ndtype = \"float32\"\n")  # export alone
    assert plan_status(recipe) == {"synthesize": "up to date", "calibrate": "up to date", "train": "up to date",
                                   "export": "run"}
    with open(tmp_path / "prompts.jsonl", "a") as handle:  # the data: everything downstream of it
        handle.write(json.dumps({"prompt": "one more"}) + "\n")
    assert set(plan_status(recipe).values()) == {"run"}
    summary = json.loads((tmp_path / "out" / "run.json").read_text())
    assert summary["ok"] and set(summary["stages"]) == set(before)


def test_sigkill_mid_training_resumes_to_identical_artifacts(tmp_path, tiny_llama):
    reference, interrupted = tmp_path / "reference", tmp_path / "interrupted"
    reference.mkdir()
    interrupted.mkdir()
    cli("run", small_recipe(reference, tiny_llama, steps=30))
    recipe = small_recipe(interrupted, tiny_llama, steps=30)
    driver = subprocess.Popen([*CLI, "run", str(recipe)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    checkpoint = interrupted / "out" / "train" / "checkpoints" / "step-0000010"
    deadline = time.time() + 600
    while not checkpoint.exists() and time.time() < deadline and driver.poll() is None:
        time.sleep(0.05)
    assert checkpoint.exists(), "training never reached step 10"
    os.kill(driver.pid, signal.SIGKILL)
    driver.wait()
    assert not (interrupted / "out" / "train" / "stage.json").exists()
    time.sleep(3)  # let Ray notice the dead driver and stop its workers
    cli("run", recipe)
    manifest = json.loads((interrupted / "out" / "train" / "stage.json").read_text())
    resumed = manifest["counts"]["resumed_from_step"]
    assert resumed >= 10 and manifest["counts"]["steps"] == 30
    assert manifest["counts"]["steps_this_run"] == 30 - resumed  # finished steps were not trained again
    synth = json.loads((interrupted / "out" / "synthesize" / "stage.json").read_text())
    assert synth["finished_at"] < manifest["started_at"]  # the finished stage was not redone
    ours = (interrupted / "out" / "export" / "draft" / "model.safetensors").read_bytes()
    theirs = (reference / "out" / "export" / "draft" / "model.safetensors").read_bytes()
    assert ours == theirs, "the resumed run's draft differs from the uninterrupted run's"
    metrics = (interrupted / "out" / "train" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in metrics] == list(range(1, 31))
