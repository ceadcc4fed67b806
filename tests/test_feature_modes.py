"""The feature modes' contract, checked for every mode the registry holds (a new mode is checked by being
registered): the schema names exactly the registered modes, the capture stage runs exactly for a mode that writes
features, plan has a line for each, what a worker holds adds up the parts the mode says it holds, and a mode a
tune cannot use is refused by `tune` alone, naming the modes it can use. Each mode's target source against real
features is tested in tests/test_streamed.py (streamed = cached) and tests/test_capture.py (cached = online)."""

from __future__ import annotations

import pytest

from eagle_recipes.recipe import load_recipe, validate_file
from eagle_recipes.recipe.schema import load_schema
from eagle_recipes.training.features import FEATURE_MODES, WorkerParts
from tests.helpers import PROJECT

MODES = sorted(FEATURE_MODES)
PARTS = WorkerParts(base_weights=1000, head_weights=100, base_activations=50, read_features=20, batch_features=7,
                    draft=300, draft_activations=40)


def test_the_schema_names_exactly_the_registered_modes():
    enum = load_schema()["properties"]["train"]["properties"]["features"]["enum"]
    assert sorted(enum) == MODES


@pytest.mark.parametrize("name", MODES)
def test_the_capture_stage_runs_exactly_for_a_mode_that_writes_features(name):
    mode = FEATURE_MODES[name]
    assert (mode.capture_skip is None) == mode.writes_features
    assert mode.capture_skip is None or f'"{name}"' in mode.capture_skip  # the reason plan prints names the mode


@pytest.mark.parametrize("name", MODES)
def test_a_worker_holds_the_base_model_exactly_when_the_mode_says_so(name):
    mode = FEATURE_MODES[name]
    train = {"streamed": {"in_flight": 2, "cache_gib": 0.0}}
    memory = mode.worker_memory(PARTS, train)
    assert memory.draft == PARTS.draft
    assert memory.base == (PARTS.base_weights if mode.base_in_workers else PARTS.head_weights)
    assert memory.activations >= PARTS.draft_activations


@pytest.mark.parametrize("name", MODES)
def test_plan_shows_each_mode_and_recommends_one(name):
    recipe = load_recipe(PROJECT / "recipes" / "quickstart.toml", overrides=[f"train.features={name}"])
    from eagle_recipes.sizes import feature_modes, training_sizes

    lines = feature_modes(recipe, training_sizes(recipe))
    assert [line.split(":")[0] for line in lines[1:-1]] == list(FEATURE_MODES)
    assert lines[-1].split(" ")[1] in FEATURE_MODES and lines[-1].startswith("recommended: ")
    if FEATURE_MODES[name].resources(recipe):  # what it runs beside the workers, named in plan
        assert all(line for line in FEATURE_MODES[name].resources(recipe))


@pytest.mark.parametrize("name", MODES)
def test_only_tune_refuses_a_mode_whose_features_a_tune_cannot_share(name):
    path = PROJECT / "recipes" / "quickstart.toml"
    recipe, problems = validate_file(path, overrides=[f"train.features={name}"])
    assert recipe is not None, problems  # run and validate take every mode
    recipe, problems = validate_file(path, overrides=[f"train.features={name}"], tuning=True)
    refusal = FEATURE_MODES[name].tune_refusal
    if refusal is None:
        assert recipe is not None, problems
    else:
        assert [p.key for p in problems] == ["train.features"] and refusal in problems[0].message
        usable = [other for other, mode in FEATURE_MODES.items() if mode.tune_refusal is None]
        assert all(f'"{other}"' in problems[0].hint for other in usable)


@pytest.mark.parametrize("workers,cpus,replicas,server_cpus,expected", [
    (1, 2, 1, 0, (1, 1)),  # the quickstart on 2 cores: one each, side by side
    (2, 4, 2, 0, (2, 2)),  # half of 8 to two servers, the rest to two workers
    (1, 8, 1, 2, (6, 2)),  # the recipe names the servers' share
    (1, 1, 1, 0, (1, 1)),  # one core: each still gets a thread
])
def test_streamed_servers_and_workers_split_the_cores_given_to_training(workers, cpus, replicas, server_cpus,
                                                                        expected):
    train = {"use_gpu": False, "num_workers": workers, "cpus_per_worker": cpus,
             "streamed": {"in_flight": 2, "cache_gib": 0.0, "server_cpus": server_cpus}}
    split = FEATURE_MODES["streamed"].core_split(train, {"replicas": replicas})
    assert (split.worker_cpus, split.server_cpus) == expected and split.given == workers * cpus
    assert FEATURE_MODES["streamed"].core_split({**train, "use_gpu": True}, {"replicas": replicas}) is None
    assert all(mode.core_split(train, {"replicas": replicas}) is None
               for name, mode in FEATURE_MODES.items() if not mode.feature_servers)
