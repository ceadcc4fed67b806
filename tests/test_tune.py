"""`eagle-recipes tune` on the tiny target: the space checked like overrides, trials through real Ray Tune (ASHA),
best.toml the argmax of the trials' scores and a recipe `run` takes, and a killed tune resuming without training
its finished trials again."""

from __future__ import annotations

import json
import subprocess
import time
import tomllib
from pathlib import Path

import pytest

from eagle_recipes.recipe import load_recipe, validate_file
from eagle_recipes.recipe.tune_space import expand
from eagle_recipes.run_folder import BEST_RECIPE, TRIAL_DONE, TRIAL_STARTED, TUNE_PLOT, TUNE_RESULTS, RunFolder
from tests.helpers import CLI, cli, override_recipe, plan_status, small_recipe, write_recipe
from tests.test_kill_matrix import kill_session

SPACE = '{ "train.lr" = [0.001, 0.003], "draft.overrides.qk_norm" = [false, true] }'


TUNE = f"""
[tune]
space = {SPACE}
trial_steps = 8
reports = 4
grace_reports = 2
reduction_factor = 2
"""


def tune_recipe(folder: Path, model: str) -> Path:
    """The small recipe, cached features and a held-out split, then [tune] as written (its `space =` line is
    the one a bad space's problems name)."""
    recipe = override_recipe(small_recipe(folder, model, steps=6), "train.features=cached",
                             "data.holdout_fraction=0.2")
    return write_recipe(folder, recipe.read_text() + TUNE)


def test_the_space_expands_to_the_grid_with_the_recipe_as_written_first():
    space = {"train.lr": [1, 2, 3], "train.loss": ["kl", "tv"]}
    trials = expand(space, {"train.lr": 2, "train.loss": "tv"})
    assert trials[0] == {"train.lr": 2, "train.loss": "tv"} and len(trials) == 6
    assert sorted(map(json.dumps, trials)) == sorted(json.dumps({"train.lr": a, "train.loss": b})
                                                     for a in (1, 2, 3) for b in ("kl", "tv"))
    sampled = expand(space, {"train.lr": 5, "train.loss": "kl"}, limit=3)  # as written need not be in the grid
    assert len(sampled) == 3 and sampled[0] == {"train.lr": 5, "train.loss": "kl"}
    assert sampled == expand(space, {"train.lr": 5, "train.loss": "kl"}, limit=3)  # seeded


def test_a_bad_key_or_value_in_the_space_is_refused_with_file_line_and_key(tmp_path, tiny_llama):
    recipe = tune_recipe(tmp_path, tiny_llama)
    text = recipe.read_text()
    bad = text.replace(SPACE, '{ "train.lr" = [0.001, -1], "train.optimiser" = ["muon"], '
                              '"draft.overrides.qk_nrom" = [true] }')
    recipe.write_text(bad)
    line = bad.splitlines().index(next(l for l in bad.splitlines() if l.startswith("space ="))) + 1
    loaded, problems = validate_file(recipe)
    assert loaded is None
    found = {(p.key, p.line): p for p in problems}
    assert set(found) == {('tune.space."train.lr"', line), ('tune.space."train.optimiser"', line),
                          ('tune.space."draft.overrides.qk_nrom"', line)}
    assert all(p.file == str(recipe) for p in problems)
    assert "-1" in found[('tune.space."train.lr"', line)].message
    assert "did you mean 'optimizer'" in found[('tune.space."train.optimiser"', line)].hint
    assert "qk_norm" in str(found[('tune.space."draft.overrides.qk_nrom"', line)])
    # a value that only fails beside the rest of the recipe: Muon with FSDP
    recipe = write_recipe(tmp_path, text, overrides=['tune.space={ "train.optimizer" = ["adamw", "muon"] }',
                                                     "train.strategy=fsdp"])
    _, problems = validate_file(recipe)
    assert [(p.key, "muon" in p.message and "FSDP" in p.message) for p in problems] == \
        [('tune.space."train.optimizer"', True)]
    # streamed training keeps no features for the trials to share: `tune` refuses it, `run` and `validate` ignore
    # the [tune] table's own limits
    recipe = write_recipe(tmp_path, text, overrides=["train.features=streamed"])
    _, problems = validate_file(recipe, tuning=True)
    assert [p.key for p in problems] == ["train.features"] and '"cached"' in problems[0].hint
    assert validate_file(recipe)[1] == []


@pytest.mark.slow
def test_tune_picks_the_argmax_writes_a_runnable_best_toml_and_resumes_without_redoing_trials(tmp_path, tiny_llama):
    recipe = tune_recipe(tmp_path, tiny_llama)
    tuned = RunFolder(tmp_path / "out").tune
    trials_folder = RunFolder(tmp_path / "out").trial("any").parent
    # the first tune is killed (the driver and all of its Ray, SIGKILL) once a trial is done and before the last
    driver = subprocess.Popen([*CLI, "tune", str(recipe), "tune.concurrent=1"], stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, start_new_session=True)
    deadline = time.time() + 600
    while time.time() < deadline and driver.poll() is None and not list(trials_folder.glob(f"*/{TRIAL_DONE}")):
        time.sleep(0.1)
    assert driver.poll() is None, driver.stderr.read().decode()[-3000:]
    kill_session(driver.pid)
    driver.wait()
    done_before = {path.parent.name: (path.parent / TRIAL_STARTED).read_text()
                   for path in trials_folder.glob(f"*/{TRIAL_DONE}")}
    assert 1 <= len(done_before) < 5

    result = cli("tune", recipe, "tune.concurrent=1")
    assert f"resuming: {len(done_before)} of 5 trials finished before" in result.stdout
    folders = sorted(trials_folder.iterdir())
    assert len(folders) == 5 and all((folder / TRIAL_DONE).exists() for folder in folders)
    for name, started in done_before.items():  # not trained again: the same start record
        assert (trials_folder / name / TRIAL_STARTED).read_text() == started

    rows = [json.loads(line) for line in (tuned / TUNE_RESULTS).read_text().splitlines()]
    # the grid (the recipe as written first), then the recipe as written with another seed
    assert len(rows) == 5 and rows[0]["settings"] == {"train.lr": 0.001, "draft.overrides.qk_norm": False}
    assert [row["seed_repeat"] for row in rows] == [False] * 4 + [True] and rows[4]["settings"] == rows[0]["settings"]
    assert rows[4]["reports"] != rows[0]["reports"]  # another seed trains another draft
    assert all(1.0 <= report["simulated_tau"] <= 6.0 for row in rows for report in row["reports"])
    # ASHA ends a trial only at its rung (2 reports); the others use the whole budget (4)
    assert all((row["status"], len(row["reports"])) in {("finished", 4), ("stopped", 2)} for row in rows)
    full = [row for row in rows if row["status"] == "finished" and not row["seed_repeat"]]
    best = max(full, key=lambda row: row["score"])
    best_toml = tuned / BEST_RECIPE
    written = load_recipe(best_toml)  # valid as it is
    assert written.train.lr == best["settings"]["train.lr"]
    assert written.draft.overrides.get("qk_norm", False) == best["settings"]["draft.overrides.qk_norm"]
    assert "tune" not in tomllib.loads(best_toml.read_text())
    assert f"simulated tau {best['score']:.3f}" in result.stdout and "seed-to-seed spread" in best_toml.read_text()
    assert f"simulated tau {best['score']:.3f}" in result.stdout and f"eagle-recipes run {best_toml}" in result.stdout
    assert (tuned / TUNE_PLOT).stat().st_size > 5000
    # best.toml reuses the run's data and features: only training and what follows run again
    status = plan_status(best_toml)
    assert status["synthesize"] == status["tokenize"] == status["calibrate"] == status["capture"] == "up to date"
    assert status["train"] == "run"


def test_best_toml_keeps_paths_as_written_the_tunes_output_folder_and_equal_minutes(tmp_path, tiny_llama):
    from dataclasses import replace

    from eagle_recipes.graph.plan import compile_plan
    from eagle_recipes.tuning.results import TrialResult, best_table, write_best

    recipe = load_recipe(tune_recipe(tmp_path, tiny_llama))
    report = [{"step": 6, "minutes": 0.1, "simulated_tau": 1.2}]
    baseline = TrialResult(0, {"train.lr": 0.001, "draft.overrides.qk_norm": False}, "finished", report, 0.1)
    winner = TrialResult(3, {"train.lr": 0.003, "draft.overrides.qk_norm": True}, "finished", report, 0.2)
    (tmp_path / "elsewhere").mkdir()
    table, notes = best_table(recipe, winner, baseline, budget_in_minutes=True)
    best = load_recipe(write_best(tmp_path / "elsewhere", recipe, table, notes, "a score"))
    assert best.train.lr == 0.003 and best.draft.overrides["qk_norm"] is True
    assert best.train.max_steps == 3 and any("same training minutes" in note for note in notes)  # a step twice as long
    assert best.output_dir == recipe.output_dir and best.data["data"]["prompts"] == ["prompts.jsonl"]  # as written
    before, after = compile_plan(recipe), compile_plan(best)
    assert before.stage("synthesize").fingerprint == after.stage("synthesize").fingerprint
    moved = replace(recipe, data={**recipe.data, "output_dir": str(tmp_path / "other")})  # tune --output-dir
    table, notes = best_table(moved, winner, baseline, budget_in_minutes=False)
    best = load_recipe(write_best(tmp_path / "elsewhere", moved, table, notes, "a score"))
    assert best.output_dir == tmp_path / "other" and best.train.max_steps == 6
