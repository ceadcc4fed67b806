"""The recipe language: defaults, and errors a person can act on (file, line, key path, hint; no traceback)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from eagle_recipes.recipe import load_recipe, validate_file
from eagle_recipes.recipe.schema import default_of, load_schema
from eagle_recipes.run_folder import D2T_FILE
from tests.helpers import PROJECT, cli_commands, write_recipe

GOOD = """#:schema ../schemas/recipe.schema.json
name = "demo"

[model]
path = "some/model"
config = "config.json"

[data]
prompts = ["prompts.jsonl"]
"""


@pytest.fixture
def folder(tmp_path, smollm2_config):
    (tmp_path / "prompts.jsonl").write_text('{"prompt": "hi"}\n')
    return tmp_path


def test_valid_recipe_gets_every_default(folder):
    recipe = load_recipe(write_recipe(folder, GOOD))
    assert recipe.train.lr == default_of("train.lr") == 0.0001
    assert recipe.train.ttt_steps == 7 and recipe.train.ttt_decay == 0.8
    assert recipe.draft.algorithm == "eagle3" and recipe.draft.overrides == {}
    assert recipe.synthesis.engine == "vllm" and recipe.synthesis.openai.api_key_env == "OPENAI_API_KEY"
    assert recipe.vocab.draft_vocab_size == 32000
    assert recipe.output_dir == (folder / "runs" / "demo").resolve()
    assert recipe.model.trust_remote_code is False


def test_every_schema_field_has_type_description_default():
    schema = load_schema()

    def walk(node, path):
        node = schema["$defs"][node["$ref"].split("/")[-1]] if "$ref" in node else node
        for name, child in node.get("properties", {}).items():
            child_resolved = schema["$defs"][child["$ref"].split("/")[-1]] if "$ref" in child else child
            assert "description" in child or "$ref" in child, f"{path}{name} has no description"
            if "properties" in child_resolved:
                assert child_resolved.get("additionalProperties") is False, f"{path}{name} allows unknown keys"
                walk(child_resolved, f"{path}{name}.")
            else:
                assert "default" in child_resolved, f"{path}{name} has no default"
                assert "type" in child_resolved or "enum" in child_resolved or "oneOf" in child_resolved

    assert schema["additionalProperties"] is False
    walk(schema, "")


# (name, recipe text, expected line, expected key, words the message must contain)
BAD = [
    ("toml syntax", GOOD + "[train\nlr = 1\n", 10, "", "TOML syntax error"),
    ("unclosed string", GOOD.replace('"demo"', '"demo'), 2, "", "TOML syntax error"),
    ("wrong type", GOOD + "[train]\nlr = \"fast\"\n", 11, "train.lr", "expected number"),
    ("unknown key", GOOD + "[train]\nbanana = 1\n", 11, "train.banana", "unknown key"),
    ("misspelled key", GOOD + "[train]\nlearning_rat = 1\nepochz = 2\n", 12, "train.epochz", "did you mean 'epochs'"),
    ("name from another tool", GOOD + "[train]\nlearning_rate = 1e-4\n", 11, "train.learning_rate",
     "did you mean 'lr'"),
    ("misspelled table", GOOD + "[trian]\nlr = 1\n", 10, "trian", "did you mean 'train'"),
    ("a drafter's key where it was", GOOD + "[train]\nanchors = 128\n", 11, "train.anchors",
     "moved to train.dflash.anchors"),
    ("a feature mode's key where it was", GOOD + "[train]\nstream_in_flight = 4\n", 11, "train.stream_in_flight",
     "moved to train.streamed.in_flight"),
    ("out of range", GOOD + "[train]\nttt_decay = 1.5\n", 11, "train.ttt_decay", "maximum"),
    ("below minimum", GOOD + "[synthesis]\nmax_tokens = 0\n", 11, "synthesis.max_tokens", "minimum"),
    ("missing required", GOOD.replace('path = "some/model"\n', ""), 4, "model.path", "required"),
    ("missing model", "name = \"x\"\n[data]\nprompts = []\n", None, "model", "required"),
    ("bad enum", GOOD + "[draft]\nalgorithm = \"eagle2\"\n", 11, "draft.algorithm", "did you mean 'eagle3'"),
    ("bad name pattern", GOOD.replace('"demo"', '"my run!"'), 2, "name", "does not match"),
    ("vocab too large", GOOD + "[vocab]\ndraft_vocab_size = 60000\n", 11, "vocab.draft_vocab_size", "larger than the base"),
    ("unknown override", GOOD + "[draft.overrides]\nnum_layers = 2\n", 11, "draft.overrides.num_layers",
     "valid fields"),
    ("derived override", GOOD + "[draft.overrides]\nhidden_size = 128\n", 11, "draft.overrides.hidden_size",
     "derived from the base model"),
    ("aux ids out of range", GOOD + "[draft.overrides]\naux_layer_ids = [1, 2, 40]\n", 11,
     "draft.overrides.aux_layer_ids", "outside the base model's 30 layers"),
    ("missing prompt file", GOOD.replace("prompts.jsonl", "nope.jsonl"), 9, "data.prompts", "file not found"),
    ("missing vocab cache", GOOD + f"[vocab]\ndraft_vocab_cache = \"{D2T_FILE}\"\n", 11, "vocab.draft_vocab_cache",
     "file not found"),
    ("temperature list of strings", GOOD + "[synthesis]\ntemperature = [\"hot\"]\n", 11, "synthesis.temperature",
     "not a number"),
    ("api key env pattern", GOOD + "[synthesis.openai]\napi_key_env = \"sk-123 secret\"\n", 11,
     "synthesis.openai.api_key_env", "does not match"),
    ("no data", GOOD.replace('prompts = ["prompts.jsonl"]', "prompts = []"), 8, "data.prompts", "no training data"),
    ("inline table unknown key", GOOD + "[synthesis]\nopenai = { base_urll = \"x\" }\n", 11,
     "synthesis.openai.base_urll", "did you mean 'base_url'"),
]


@pytest.mark.parametrize("name,text,line,key,words", BAD, ids=[b[0] for b in BAD])
def test_bad_recipe_names_file_line_key(folder, name, text, line, key, words):
    path = write_recipe(folder, text)
    recipe, problems = validate_file(path)
    assert recipe is None and problems, name
    rendered = [str(p) for p in problems]
    match = [r for r in rendered if words in r]
    assert match, f"no problem mentions {words!r}: {rendered}"
    problem = problems[rendered.index(match[0])]
    assert problem.file == str(path)
    assert problem.key == key
    assert problem.line == line, rendered
    prefix = f"{path}:{line}: " if line else f"{path}: "
    assert match[0].startswith(prefix + (f"{key}: " if key else "")), match[0]


def test_all_problems_reported_at_once(folder):
    path = write_recipe(folder, GOOD + "[train]\nlr = \"x\"\nepochz = 1\n")
    _, problems = validate_file(path)
    assert {p.key for p in problems} == {"train.lr", "train.epochz"}


@pytest.mark.slow
def test_validate_cli_exit_codes_and_no_traceback(folder):
    good = write_recipe(folder, GOOD, "good.toml")
    bad = write_recipe(folder, GOOD + "[train]\nepochz = 2\n", "bad.toml")
    run = lambda *a: subprocess.run([sys.executable, "-m", "eagle_recipes.cli", *a], capture_output=True, text=True)
    ok = run("validate", str(good))
    assert ok.returncode == 0 and "valid" in ok.stdout
    failed = run("validate", str(bad))
    assert failed.returncode == 1
    assert f"{bad}:11: train.epochz: unknown key (did you mean 'epochs'?)" in failed.stderr
    assert "Traceback" not in failed.stderr + failed.stdout
    missing = run("validate", str(folder / "absent.toml"))
    assert missing.returncode == 1 and "cannot read the recipe" in missing.stderr


def test_every_shipped_recipe_validates():
    paths = sorted((PROJECT / "recipes").glob("*.toml")) + sorted((PROJECT / "catalog").glob("*/*.toml"))
    assert len(paths) >= 20
    for path in paths:
        recipe, problems = validate_file(path)
        assert not problems, [str(p) for p in problems]
        assert path.read_text().startswith("#:schema "), f"{path} lacks the #:schema line"


def test_schema_command_prints_the_schema():
    out = subprocess.run([sys.executable, "-m", "eagle_recipes.cli", "schema"], capture_output=True, text=True)
    assert out.returncode == 0 and '"$schema": "https://json-schema.org/draft/2020-12/schema"' in out.stdout


@pytest.mark.slow
def test_help_and_version():
    run = lambda *a: subprocess.run([sys.executable, "-m", "eagle_recipes.cli", *a], capture_output=True, text=True)
    assert re.search(r"eagle-recipes \d+\.\d+", run("--version").stdout)
    helped = run("--help").stdout
    commands = cli_commands()
    assert {"validate", "plan", "run", "eval"} <= commands
    for command in commands:
        assert command in helped, f"--help does not name {command}"
    assert "example" in run("plan", "--help").stdout


def test_online_training_of_a_base_too_large_for_a_gpu_is_refused(folder):
    seventy_b = PROJECT / "catalog" / "llama3" / "configs" / "Llama-3.3-70B-Instruct.json"
    (folder / "config.json").write_text(seventy_b.read_text())
    text = GOOD + "\n[train]\nuse_gpu = true\nnum_workers = 8\n"
    recipe, problems = validate_file(write_recipe(folder, text))
    assert recipe is None and len(problems) == 1
    problem = problems[0]
    assert problem.key == "train.features" and "online training needs about" in problem.message
    assert 'train.features = "cached" or "streamed"' in problem.hint
    assert problem.line == text.splitlines().index("[train]") + 1
    assert load_recipe(write_recipe(folder, text, overrides=["train.features=cached"]))
    assert load_recipe(write_recipe(folder, text, overrides=["train.features=streamed"]))
    # a base that fits, online: fine (the SmolLM2 config of the fixture)
    smollm2 = PROJECT / "catalog/smollm2/configs/SmolLM2-135M-Instruct.json"
    recipe, problems = validate_file(write_recipe(folder, GOOD, overrides=[f'model.config="{smollm2}"',
                                                                           "train.use_gpu=true"]))
    assert problems == []


def test_vllm_capture_needs_gpus(folder):
    text = GOOD + '\n[train]\nfeatures = "cached"\n[capture]\nengine = "vllm"\n'
    recipe, problems = validate_file(write_recipe(folder, text))
    assert [p.key for p in problems] == ["capture.engine"] and 'engine = "hf"' in problems[0].hint


def test_cached_features_larger_than_the_disk_are_refused_once_their_size_is_exact(folder):
    """Once the run's sequences are tokenized (tokenize/tokenized/), cached features are checked against the disk:
    here a shard claims 10^12 tokens (offsets only; nothing else is read), 4.2 PiB of cache."""
    import numpy as np

    from eagle_recipes.run_folder import SEQUENCES_FOLDER, TOKENIZE

    shard = folder / "runs" / "demo" / TOKENIZE / SEQUENCES_FOLDER / "00000"
    shard.mkdir(parents=True)
    np.save(shard / "offsets.npy", np.array([0, 10 ** 12], dtype=np.int64))
    np.save(shard / "pad_id.npy", np.int64(0))
    text = GOOD + '[train]\nfeatures = "cached"\n'
    output_dir = 'output_dir="runs/{name}"'
    _, problems = validate_file(write_recipe(folder, text, overrides=[output_dir]))
    assert [p.key for p in problems] == ["train.features"], problems
    assert "1,000,000,000,000 tokenized tokens x 4,616 B" in problems[0].message
    assert 'train.features = "streamed"' in problems[0].hint
    for features in ("online", "streamed"):  # no feature disk: the same size is fine
        other, _ = validate_file(write_recipe(folder, text, f"{features}.toml",
                                              overrides=[output_dir, f"train.features={features}"]))
        assert other is not None


def test_fsdp_and_bf16_validate_on_cpu(folder):
    """FSDP2 runs on gloo and bfloat16 autocast on a CPU (tests/test_fsdp.py): neither is refused any more."""
    text = GOOD + '\n[train]\nstrategy = "fsdp"\nprecision = "bfloat16"\nnum_workers = 2\n'
    recipe = load_recipe(write_recipe(folder, text))
    assert recipe.train.strategy == "fsdp" and not recipe.train.use_gpu and recipe.train.precision == "bfloat16"


def _planned_resources(recipe: Path, *overrides: str) -> dict[str, list[str]]:
    import json

    out = subprocess.run([sys.executable, "-m", "eagle_recipes.cli", "plan", str(recipe), *overrides, "--json"],
                         capture_output=True, text=True, check=True)
    return {stage["name"]: stage["resources"] for stage in json.loads(out.stdout)["stages"]}


def _feature_modes(resources: list[str]) -> list[str]:
    return [line for line in resources if line.split(":")[0] in ("online", "cached", "streamed", "recommended")]


@pytest.mark.slow
def test_plan_tells_what_each_feature_mode_costs_at_the_recipes_size(folder):
    text = GOOD + '\n[train]\nfeatures = "cached"\nmax_seq_len = 1000\n'
    resources = _planned_resources(write_recipe(folder, text))
    # one prompt, at most 1000 tokens; SmolLM2: aux layers 3 x 576 + final 576, bf16, + top and token ids
    assert "cache: at most 1,000 tokens x 4,616 B = at most 4 MiB" in resources["capture"]
    online, cached, streamed, recommended = _feature_modes(resources["train"])
    assert streamed.startswith("streamed: no feature disk, ") and "every epoch" in streamed, streamed
    assert online.startswith("online: no feature disk, ") and "forward over the data every epoch" in online, online
    assert cached.startswith("cached: at most 4 MiB of feature disk (4,616 B a token; ") and "run once" in cached
    assert recommended.startswith("recommended: cached (it fits the disk"), recommended


@pytest.mark.slow
def test_plan_at_a_stated_size_for_a_dataset_whose_rows_are_unknown_offline(folder):
    """A Hub dataset's row count is unknown offline: the cache's size is unknown until data.max_samples states
    it; at 500,000 conversations of up to 1,000 tokens the cache (2.1 TiB) outgrows this disk and plan says so."""
    hub = 'data.prompts=[{ dataset = "HuggingFaceH4/ultrachat_200k", split = "train_sft" }]'
    text = GOOD + '\n[train]\nfeatures = "cached"\nmax_seq_len = 1000\n'
    recipe = write_recipe(folder, text, overrides=[hub])
    _, cached, _, recommended = _feature_modes(_planned_resources(recipe)["train"])
    assert cached.startswith("cached: unknown (set data.max_samples to the conversations you plan)"), cached
    assert recommended == "recommended: online (the feature cache's size is not known)"
    resources = _planned_resources(recipe, "data.max_samples=500000")
    assert "cache: at most 500,000,000 tokens x 4,616 B = at most 2.1 TiB" in resources["capture"]
    _, cached, _, recommended = _feature_modes(resources["train"])
    assert cached.startswith("cached: at most 2.1 TiB of feature disk"), cached
    from eagle_recipes.sizes import free_disk

    if free_disk(folder) < 2.1 * 1024 ** 4:  # this machine's disk: CI's and ours are far smaller
        assert recommended == "recommended: online (the feature cache would not fit the disk under output_dir)"


def _plan_fingerprints(recipe) -> dict[str, str]:
    from eagle_recipes.graph.plan import compile_plan

    return {stage.name: stage.fingerprint for stage in compile_plan(recipe).stages}


def test_an_override_changes_the_run_as_the_same_edit_in_the_file_would(folder):
    """`run r.toml train.lr=3e-4 ...`: the same recipe, the same stage fingerprints as the edited file, and the
    overrides recorded; the unedited recipe differs (the override is not ignored)."""
    base = write_recipe(folder, GOOD + '\n[train]\nlr = 0.001\n', "base.toml")
    edited = write_recipe(folder, GOOD + '\n[train]\nlr = 0.0003\nmax_steps = 200\n\n[vocab]\ndraft_vocab_size = 4096\n'
                          '\n[eval]\nprompts = ["mt-bench"]\n', "edited.toml")
    overrides = ("train.lr=3e-4", "train.max_steps=200", "vocab.draft_vocab_size=4096", 'eval.prompts=["mt-bench"]')
    overridden = load_recipe(base, overrides=overrides)
    assert overridden.data == load_recipe(edited).data
    assert overridden.overrides == overrides
    assert _plan_fingerprints(overridden) == _plan_fingerprints(load_recipe(edited))
    assert _plan_fingerprints(overridden)["train"] != _plan_fingerprints(load_recipe(base))["train"]
    assert load_recipe(base, overrides=["train.optimizer=muon"]).train.optimizer == "muon"  # a bare word: a string


@pytest.mark.parametrize("override, key, words", [
    ("train.lrr=1e-3", "train.lrr", "unknown key (did you mean 'lr'?)"),
    ("train.lr=fast", "train.lr", "expected number"),
    ("train.lr", "train.lr", "not a KEY=VALUE override"),
    ("data.prompts.first=x", "data.prompts.first", "data.prompts is a value, not a table"),
])
def test_a_bad_override_is_refused_naming_the_key_and_the_command_line(folder, override, key, words):
    path = write_recipe(folder, GOOD)
    _, problems = validate_file(path, overrides=[override])
    assert [p.key for p in problems] == [key]
    assert f"{path} (command line: {override}): {key}:" in str(problems[0]) and words in str(problems[0])


@pytest.mark.slow
def test_run_and_validate_take_overrides_on_the_command_line(folder):
    path = write_recipe(folder, GOOD)
    run = lambda *a: subprocess.run([sys.executable, "-m", "eagle_recipes.cli", *a], capture_output=True, text=True)
    assert run("validate", str(path), "train.lr=3e-4").returncode == 0
    refused = run("plan", str(path), "train.epochz=2", "--json")
    assert refused.returncode == 1 and "(command line: train.epochz=2): train.epochz: unknown key" in refused.stderr
    import json

    def train_fingerprint(*overrides: str) -> str:
        stages = json.loads(run("plan", str(path), *overrides, "--json").stdout)["stages"]
        return next(s["fingerprint"] for s in stages if s["name"] == "train")

    edited = write_recipe(folder, GOOD + "\n[train]\nmax_steps = 7\n", "edited.toml")
    edited_stages = json.loads(run("plan", str(edited), "--json").stdout)["stages"]
    assert train_fingerprint("train.max_steps=7") == next(s["fingerprint"] for s in edited_stages
                                                           if s["name"] == "train") != train_fingerprint()
