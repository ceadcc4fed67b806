"""A draft is served with the layers it was trained on, proven by real vLLM (the CPU build, its V1 runner) on the
real SmolLM2-135M: a draft trained through the graph on non-default aux layers, the same folder with its layer ids
shifted by one, and the folder re-laid out as ModelOpt exports it (SGLang's numbering, nested only), each measured
by vLLM against the pure-PyTorch reference decoder reading the layers the folder names.

The draft is trained on the very prompts it is then served (their greedy replies, 20 passes): acceptance is high and
hangs on the exact features, which makes a misread layer visible. That is a check of the serving plumbing, never a
measure of a draft: the quickstart measures on prompts no recipe trained on.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest

from eagle_recipes.evaluation.prompt_sets import prompts_from_file
from eagle_recipes.evaluation.reference_path import evaluate_reference
from eagle_recipes.evaluation.vllm_path import evaluate_vllm
from eagle_recipes.run_folder import REPORT_FILE, RunFolder
from tests.conftest import SMOLLM2
from tests.helpers import PROJECT

pytestmark = pytest.mark.slow  # real processes, engines or graph runs: `make test-fast` leaves these out

TRAINED = [1, 15, 27]  # SmolLM2's default is [2, 15, 27]
SHIFTED = [0, 14, 26]  # one layer shallower: the first id now reads the embeddings
K, MAX_TOKENS, PROMPTS = 3, 40, 8
CLI = [sys.executable, "-m", "eagle_recipes.cli"]


def _recipe(folder) -> str:
    prompts = folder / "prompts.jsonl"
    lines = (PROJECT / "recipes/data/quickstart_prompts.jsonl").read_text().splitlines()[:PROMPTS]
    prompts.write_text("\n".join(lines) + "\n")
    return f"""
name = "served-layers"
output_dir = "{folder / 'run'}"
[model]
path = "{SMOLLM2}"
config = "{PROJECT / 'catalog/smollm2/configs/SmolLM2-135M-Instruct.json'}"
[data]
prompts = ["{prompts}"]
holdout_fraction = 0.0
[synthesis]
engine = "vllm"
max_tokens = {MAX_TOKENS}
[vocab]
draft_vocab_size = 2048
[draft.overrides]
aux_layer_ids = {TRAINED}
[train]
features = "cached"
epochs = 24
max_steps = 160
lr = 0.002
loss_on = "all"
cpus_per_worker = 2
[capture]
dtype = "float32"
[eval]
prompts = ["{prompts}"]
num_speculative_tokens = {K}
max_tokens = {MAX_TOKENS}
[eval.speed]
concurrency = []
"""


@pytest.fixture(scope="module")
def trained(tmp_path_factory, smollm2_path):
    """(base, draft folder, prompt set, vLLM's report of the exported draft) from one graph run."""
    folder = tmp_path_factory.mktemp("served-layers")
    recipe = folder / "recipe.toml"
    recipe.write_text(_recipe(folder))
    done = subprocess.run([*CLI, "run", str(recipe)], capture_output=True, text=True, timeout=1200)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    run = RunFolder(folder / "run")
    report = json.loads(run.report.read_text())["sets"]["prompts"]
    return smollm2_path, run.draft, prompts_from_file(folder / "prompts.jsonl"), report


def _relaid(source, folder, config_change) -> object:
    folder.mkdir()
    for path in source.iterdir():
        if path.name != "config.json":
            shutil.copy(path, folder / path.name)
    config = json.loads((source / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps(config_change(config)))
    return folder


def _shifted(config: dict) -> dict:
    """The same draft naming the layers one shallower, for every engine."""
    return {**config, "eagle_aux_hidden_state_layer_ids": SHIFTED,
            "eagle_config": {**config["eagle_config"], "eagle_aux_hidden_state_layer_ids": [i - 1 for i in SHIFTED]}}


def _modelopt(config: dict) -> dict:
    """As ModelOpt (and SpecForge) write it: ids nested alone, in SGLang's numbering."""
    nested = {**config["eagle_config"], "eagle_aux_hidden_state_layer_ids": [i - 1 for i in TRAINED]}
    return {**{k: v for k, v in config.items() if k != "eagle_aux_hidden_state_layer_ids"}, "eagle_config": nested}


def _close(ours, reference, tolerance=0.1):
    return all(abs(a - b) <= tolerance for a, b in zip(ours, reference, strict=True))


def test_vllm_serves_non_default_layers_as_trained_and_tells_a_shifted_folder_apart(trained, tmp_path):
    base, draft, prompts, exported = trained
    config = json.loads((draft / "config.json").read_text())
    assert config["eagle_aux_hidden_state_layer_ids"] == TRAINED  # vLLM's numbering, read first by both runners
    assert config["eagle_config"]["eagle_aux_hidden_state_layer_ids"] == [i - 1 for i in TRAINED]  # SGLang's
    reference = evaluate_reference(base, draft, K, [prompts], MAX_TOKENS)[prompts.name]
    assert exported["identical"] == PROMPTS, exported  # lossless
    assert _close(exported["per_position"], reference.per_position), (exported, reference)
    assert reference.per_position[0] > 0.6, reference  # a draft whose proposals hang on its features

    shifted = _relaid(draft, tmp_path / "shifted", _shifted)
    served = evaluate_vllm(base, str(shifted), {"method": "eagle3"}, K, [prompts], MAX_TOKENS)[0][prompts.name]
    shifted_reference = evaluate_reference(base, shifted, K, [prompts], MAX_TOKENS)[prompts.name]
    assert served.lossless, served.identical
    assert _close(served.per_position, shifted_reference.per_position), (served, shifted_reference)
    # the two are told apart: one layer off costs acceptance that the trained layers' draft does not lose
    assert exported["acceptance_length"] - served.acceptance_length > 0.3, (exported, served)


def test_eval_serves_a_modelopt_style_export_with_the_layers_it_was_trained_on(trained, tmp_path):
    base, draft, prompts, exported = trained
    folder = _relaid(draft, tmp_path / "modelopt", _modelopt)
    written = (folder / "config.json").read_bytes()
    inspect = subprocess.run([*CLI, "inspect", str(folder)], capture_output=True, text=True)
    assert inspect.returncode == 1 and "vLLM V1 would feed layers [0, 14, 26]" in inspect.stdout, inspect.stdout
    out = tmp_path / "eval"
    done = subprocess.run([*CLI, "eval", "--base", base, "--draft", str(folder), "--prompts",
                           str(draft.parents[2] / "prompts.jsonl"), "-k", str(K), "--max-tokens", str(MAX_TOKENS),
                           "--out", str(out), "--concurrency", "none"], capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "serving a copy" in done.stdout and f"{TRAINED}" in done.stdout, done.stdout[-2000:]
    assert (folder / "config.json").read_bytes() == written  # the user's folder is never edited
    report = json.loads((out / REPORT_FILE).read_text())
    assert report["sets"]["prompts"]["identical"] == PROMPTS
    # what the exported folder gets (vLLM within 0.1 of the reference decoder on the trained layers)
    assert _close(report["per_position"], exported["per_position"], 0.02), (report["per_position"], exported)
