"""Planning in isolation: which stages `--only`, `--from` and `--force` run, given finished stage manifests
(written here with the plan's own fingerprints, as a finished run leaves them). Nothing runs; no Ray."""

from __future__ import annotations

import pytest

from eagle_recipes.manifest import Manifest, write_manifest
from eagle_recipes.graph.plan import compile_plan
from eagle_recipes.recipe import load_recipe
from eagle_recipes.run_folder import RunFolder
from tests.helpers import recipe_head, write_recipe

RECIPE = recipe_head("planning", "some/model", config="config.json") + """
[train]
features = "cached"
"""
ALL = ["synthesize", "tokenize", "calibrate", "capture", "train", "export", "evaluate"]


@pytest.fixture
def recipe(tmp_path, smollm2_config):
    (tmp_path / "prompts.jsonl").write_text('{"prompt": "hi"}\n')
    return load_recipe(write_recipe(tmp_path, RECIPE))


def finish(recipe, names: list[str]) -> None:
    """Leave the manifests a finished run of these stages would leave."""
    plan, run = compile_plan(recipe), RunFolder(recipe.output_dir)
    for name in names:
        write_manifest(run.stage(name), Manifest(stage=name, fingerprint=plan.stage(name).fingerprint,
                                                 started_at=0.0, finished_at=1.0, wall_s=1.0))


def statuses(plan) -> dict[str, str]:
    return {stage.name: stage.status for stage in plan.stages}


def test_a_fresh_recipe_runs_everything_and_a_finished_one_nothing(recipe):
    assert statuses(compile_plan(recipe)) == dict.fromkeys(ALL, "run")
    finish(recipe, ALL)
    assert statuses(compile_plan(recipe)) == dict.fromkeys(ALL, "up to date")


def test_only_runs_that_stage_even_when_up_to_date_and_leaves_the_rest(recipe):
    finish(recipe, ALL)
    plan = compile_plan(recipe, only="train")
    assert statuses(plan) == {**dict.fromkeys(ALL, "up to date"), "train": "run"}
    assert plan.stage("train").reason == "--only"


def test_only_skips_unfinished_stages_instead_of_running_them(recipe):
    finish(recipe, ["synthesize", "tokenize", "calibrate", "capture"])
    assert statuses(compile_plan(recipe, only="train")) == {
        "synthesize": "up to date", "tokenize": "up to date", "calibrate": "up to date", "capture": "up to date",
        "train": "run",
        "export": "skipped", "evaluate": "skipped"}


def test_from_runs_that_stage_and_everything_after_it(recipe):
    finish(recipe, ALL)
    plan = compile_plan(recipe, start_from="capture")
    assert statuses(plan) == {"synthesize": "up to date", "tokenize": "up to date", "calibrate": "up to date",
                              "capture": "run",
                              "train": "run", "export": "run", "evaluate": "run"}
    assert plan.stage("export").reason == "--from capture"


def test_force_reruns_a_stage_and_everything_downstream_of_it_only(recipe):
    finish(recipe, ALL)
    plan = compile_plan(recipe, force={"calibrate"})
    assert statuses(plan) == {"synthesize": "up to date", "tokenize": "up to date", "calibrate": "run",
                              "capture": "up to date",
                              "train": "run", "export": "run", "evaluate": "run"}
    assert plan.stage("train").reason == "upstream will re-run: calibrate"
    assert plan.stage("evaluate").reason == "upstream will re-run: export"


@pytest.mark.parametrize("option", ["only", "start_from"])
def test_a_stage_outside_the_graph_is_refused_by_name(recipe, option):
    with pytest.raises(ValueError, match="stage 'bogus' is not in this recipe's graph"):
        compile_plan(recipe, **{option: "bogus"})


def test_a_left_out_stage_is_refused_with_the_reason(tmp_path, smollm2_config):
    (tmp_path / "prompts.jsonl").write_text('{"prompt": "hi"}\n')
    online = load_recipe(write_recipe(tmp_path, RECIPE, overrides=["train.features=online"]))
    with pytest.raises(ValueError, match="stage 'capture' is not in this recipe's graph.*left out"):
        compile_plan(online, only="capture")


def test_an_eagle1_recipe_has_no_calibrate_stage_and_trains_on_the_sequences_alone(tmp_path, smollm2_config):
    (tmp_path / "prompts.jsonl").write_text('{"prompt": "hi"}\n')
    eagle1 = load_recipe(write_recipe(tmp_path, RECIPE + '[draft]\nalgorithm = "eagle1"\n'))
    plan = compile_plan(eagle1)
    assert "calibrate" in plan.left_out and "whole vocabulary" in plan.left_out["calibrate"]
    assert plan.stage("train").depends_on == ["tokenize", "capture"]
    # a vocabulary setting changes nothing an EAGLE-1 draft is trained from
    other = load_recipe(write_recipe(tmp_path, RECIPE + '[draft]\nalgorithm = "eagle1"\n[vocab]\ncount = "all"\n',
                                     name="other.toml"))
    assert compile_plan(other).stage("train").fingerprint == plan.stage("train").fingerprint


def test_eagle3_and_dflash_share_one_capture_and_eagle1_does_not(tmp_path, smollm2_config):
    """The capture stores what the draft reads: the aux states for EAGLE-3 and DFlash, the final state for EAGLE-1."""
    (tmp_path / "prompts.jsonl").write_text('{"prompt": "hi"}\n')

    def capture_fingerprint(algorithm: str) -> str:
        recipe = load_recipe(write_recipe(tmp_path, RECIPE + f'[draft]\nalgorithm = "{algorithm}"\n',
                                          name=f"{algorithm}.toml"))
        return compile_plan(recipe).stage("capture").fingerprint

    assert capture_fingerprint("eagle3") == capture_fingerprint("dflash")
    assert capture_fingerprint("eagle1") != capture_fingerprint("eagle3")
