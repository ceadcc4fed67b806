"""Bad input through every command: one message that names the culprit (file, key, line or tensor) and what to
do, exit status 1 (2 for usage), never a traceback. Each row is a real `eagle-recipes` process."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import pytest
import torch
from safetensors.torch import load_file, save_file

from eagle_recipes.data.formats import HELD_OUT_SPLIT
from eagle_recipes.run_folder import D2T_FILE, RUN_SUMMARY, SYNTHESIZE, RunFolder
from tests.builders import build_permutation_target, export_copy_draft, permutation
from tests.helpers import CLI, PROJECT, cli_commands, recipe_head, write_recipe

pytestmark = pytest.mark.slow  # real processes, engines or graph runs: `make test-fast` leaves these out

SMOL_CONFIG = PROJECT / "catalog" / "smollm2" / "configs" / "SmolLM2-135M-Instruct.json"
GOOD = recipe_head("bad-input", "some/model", config="config.json") + """[synthesis]
engine = "none"
"""
ASSISTANT_ONLY = '{"conversations": [{"role": "assistant", "content": "no question was asked"}]}\n'


@dataclass
class Row:
    name: str
    args: Callable[[Path], list[str]]  # the command line, given the prepared folder
    status: int
    names: list[str]  # what the message must name
    prepare: Callable[[Path], None] = lambda folder: None


def recipe(text: str, file: str = "recipe.toml", overrides: Sequence[str] = ()) -> Callable[[Path], None]:
    """Write the recipe text (with `KEY=VALUE` overrides set, if any)."""
    def write(folder: Path) -> None:
        write_recipe(folder, text, file, overrides=overrides)
    return write


def good_with(*overrides: str) -> Callable[[Path], None]:
    """Write the good recipe with `KEY=VALUE` overrides set."""
    return recipe(GOOD, overrides=overrides)


def data(file: str, content: str | bytes) -> Callable[[Path], None]:
    def write(folder: Path) -> None:
        path = folder / file
        path.write_bytes(content) if isinstance(content, bytes) else path.write_text(content)
    return write


def both(*steps: Callable[[Path], None]) -> Callable[[Path], None]:
    return lambda folder: [step(folder) for step in steps] and None


def draft_edit(edit: Callable[[Path], None]) -> Callable[[Path], None]:
    """A copy of the good draft, then one thing broken in it."""
    def prepare(folder: Path) -> None:
        shutil.copytree(folder / "good-draft", folder / "draft")
        edit(folder / "draft")
    return prepare


def tensors_edit(change: Callable[[dict], None]) -> Callable[[Path], None]:
    def edit(draft: Path) -> None:
        tensors = load_file(str(draft / "model.safetensors"))
        change(tensors)
        save_file(tensors, str(draft / "model.safetensors"))
    return draft_edit(edit)


def config_edit(change: Callable[[dict], object]) -> Callable[[Path], None]:
    """`change` returns what to write instead of the config (a JSON value), or None to write the config it edited."""
    def edit(draft: Path) -> None:
        config = json.loads((draft / "config.json").read_text())
        replacement = change(config)
        (draft / "config.json").write_text(json.dumps(config if replacement is None else replacement))
    return draft_edit(edit)


def truncate(file: str, keep: int) -> Callable[[Path], None]:
    def edit(draft: Path) -> None:
        path = draft / file
        path.write_bytes(path.read_bytes()[:keep])
    return draft_edit(edit)


BINARY = bytes(range(256)) * 4
R = "recipe.toml"


def validate(folder: Path) -> list[str]:
    return ["validate", str(folder / R)]


def eval_args(*extra: str, base: str = "base", draft: str = "good-draft") -> Callable[[Path], list[str]]:
    return lambda folder: ["eval", "--base", str(folder / base), "--draft", str(folder / draft),
                           "--engine", "reference", *[e.format(folder=folder) for e in extra]]


ROWS = [
    # validate: the recipe file itself
    Row("validate: no such file", lambda f: ["validate", str(f / "missing.toml")], 1,
        ["missing.toml", "cannot read the recipe"]),
    Row("validate: a directory", lambda f: ["validate", str(f / "adir")], 1, ["adir", "Is a directory"]),
    Row("validate: under a file", lambda f: ["validate", str(f / "prompts.jsonl" / "x.toml")], 1,
        ["x.toml", "cannot read the recipe"]),
    Row("validate: empty file", validate, 1, [R, "name"], recipe("")),
    Row("validate: an override and no recipe", lambda f: ["validate", "train.lr=1e-3"], 1,
        ["no recipe given", "validate my.toml train.lr=3e-4"]),
    Row("plan: an override in the recipe's place", lambda f: ["plan", "train.lr=1e-3"], 1,
        ["train.lr=1e-3 is an override, not a recipe"]),
    Row("validate: an output folder run cannot make", lambda f: ["validate", str(f / R), "output_dir=/proc/no/x"], 1,
        ["output_dir", "cannot make /proc/no/x"]),
    Row("validate: binary file", validate, 1, [R, "not UTF-8 text"], data(R, BINARY)),
    Row("validate: TOML syntax", validate, 1, [f"{R}:1", "TOML syntax error"], recipe('name = "unclosed\n')),
    Row("validate: misspelt key", validate, 1, ["train.lrr", "did you mean 'lr'"],
        recipe(GOOD + "[train]\nlrr = 0.1\n")),
    Row("validate: value out of range", validate, 1, ["vocab.draft_vocab_size"],
        recipe(GOOD + "[vocab]\ndraft_vocab_size = 0\n")),
    Row("validate: wrong type", validate, 1, ["train.lr", "fast"], recipe(GOOD + '[train]\nlr = "fast"\n')),
    Row("validate: negative learning rate", validate, 1, ["train.lr"], recipe(GOOD + "[train]\nlr = -1.0\n")),
    # validate: the files a recipe names
    Row("validate: prompt file missing", validate, 1, ["data.prompts", "file not found: nope.jsonl"],
        good_with('data.prompts=["nope.jsonl"]')),
    Row("validate: prompt file is a directory", validate, 1, ["data.prompts", "adir", "a directory"],
        good_with('data.prompts=["adir"]')),
    Row("validate: prompt file is binary", validate, 1, ["data.prompts", "bin.jsonl", "not UTF-8 text"],
        both(good_with('data.prompts=["bin.jsonl"]'), data("bin.jsonl", BINARY))),
    Row("validate: prompt file is empty", validate, 1, ["data.prompts", "empty.jsonl", "no rows"],
        both(good_with('data.prompts=["empty.jsonl"]'), data("empty.jsonl", ""))),
    Row("validate: truncated JSONL line", validate, 1, ["cut.jsonl", "line 1 is not valid JSON"],
        both(good_with('data.prompts=["cut.jsonl"]'), data("cut.jsonl", '{"prompt": "a question th\n'))),
    Row("validate: conversations line truncated", validate, 1, ["data.conversations", "conv.jsonl", "line 2",
                                                                 "not valid JSON"],
        both(good_with("data.prompts=[]", 'data.conversations=["conv.jsonl"]'),
             data("conv.jsonl", '{"conversation_id": "a", "conversations": []}\n{"conversation_id": "b", "conv\n'))),
    Row("validate: conversations row without an id", validate, 1, ["conv.jsonl", "line 1", "conversation_id"],
        both(good_with("data.prompts=[]", 'data.conversations=["conv.jsonl"]'),
             data("conv.jsonl", '{"conversations": [{"role": "user", "content": "hi"}]}\n'))),
    Row("validate: base config not JSON", validate, 1, ["model.config", "config.json", "not a readable JSON file"],
        data("config.json", "{not json")),
    Row("validate: base config lacks a field", validate, 1, ["model.config", "lacks the field 'hidden_size'"],
        data("config.json", json.dumps({k: v for k, v in json.loads(SMOL_CONFIG.read_text()).items()
                                        if k != "hidden_size"}))),
    Row("validate: base config is a list", validate, 1, ["model.config", "expected a JSON object"],
        data("config.json", "[1, 2]")),
    Row("validate: base model folder missing", validate, 1, ["model.path", "/no/such/model", "no such model folder"],
        good_with('model.path="/no/such/model"', 'model.config=""')),
    Row("validate: unknown draft field", validate, 1, ["draft.overrides.num_layers", "did you mean"],
        recipe(GOOD + "[draft.overrides]\nnum_layers = 2\n")),
    Row("validate: draft vocabulary too large", validate, 1, ["vocab.draft_vocab_size", "larger than the base"],
        recipe(GOOD + "[vocab]\ndraft_vocab_size = 100000\n")),
    Row("validate: aux layer out of range", validate, 1, ["draft.overrides.aux_layer_ids", "outside the base"],
        recipe(GOOD + "[draft.overrides]\naux_layer_ids = [1, 2, 99]\n")),
    Row("validate: YaRN without its original length", validate, 1,
        ["export.rope_scaling", "original_max_position_embeddings"],
        recipe(GOOD + '[export.rope_scaling]\nrope_type = "yarn"\nfactor = 4.0\n')),
    Row("validate: rope factor below 1", validate, 1, ["export.rope_scaling.factor"],
        recipe(GOOD + '[export.rope_scaling]\nrope_type = "linear"\nfactor = 0.5\n')),
    Row("validate: vocabulary cache missing", validate, 1, ["vocab.draft_vocab_cache", f"file not found: {D2T_FILE}"],
        recipe(GOOD + f'[vocab]\ndraft_vocab_cache = "{D2T_FILE}"\n')),
    # plan, run, submit
    Row("plan: no such recipe", lambda f: ["plan", str(f / "missing.toml")], 1, ["missing.toml"]),
    Row("plan: unknown stage", lambda f: ["plan", str(f / R), "--only", "bogus"], 2, ["invalid choice: 'bogus'"]),
    Row("plan: stage left out of this recipe", lambda f: ["plan", str(f / R), "--only", "capture"], 2,
        ["stage 'capture'", "left out"]),
    Row("run: upstream never ran", lambda f: ["run", str(f / R), "--only", "train"], 1,
        ["stage train reads", "has not run yet"]),
    Row("run: output folder unwritable", lambda f: ["run", str(f / R), "--output-dir", "/proc/eagle-out"], 1,
        ["/proc/eagle-out", "cannot write there"]),
    Row("run: cluster unreachable", lambda f: ["run", str(f / R), "--address", "127.0.0.1:9"], 1,
        ["127.0.0.1:9", "cannot reach the Ray cluster"]),
    Row("tune: no space to search", lambda f: ["tune", str(f / R)], 1, [R, "[tune] has no space"]),
    Row("tune: a bad value in the space", lambda f: ["tune", str(f / R)], 1,
        ['tune.space."train.loss"', "'l3' is not one of"], recipe(GOOD + '[tune]\nspace = { "train.loss" = ["kl", "l3"] }\n')),
    Row("tune: a key trials cannot vary", lambda f: ["tune", str(f / R)], 1,
        ['tune.space."data.holdout_fraction"', "not a train.* or draft.* key"],
        recipe(GOOD + '[tune]\nspace = { "data.holdout_fraction" = [0.1] }\n')),
    Row("submit: no such recipe", lambda f: ["submit", str(f / "missing.toml"), "--address", "http://x:8265"], 1,
        ["missing.toml"]),
    Row("submit: dashboard unreachable", lambda f: ["submit", str(f / R), "--address", "http://127.0.0.1:9"], 1,
        ["http://127.0.0.1:9", "cannot reach the Ray dashboard"]),
    Row("submit: no address", lambda f: ["submit", str(f / R)], 2, ["--address"]),
    # catalog
    Row("catalog: no such entry", lambda f: ["catalog", "show", "nope/nothing"], 1, ["nope/nothing"]),
    Row("catalog: not a name", lambda f: ["catalog", "show", "../../etc"], 1, ["../../etc", "not a catalog name"]),
    Row("catalog: unwritable destination", lambda f: ["catalog", "copy", "smollm2/SmolLM2-135M-Instruct",
                                                      "/proc/x.toml"], 1, ["/proc/x.toml", "cannot write it"]),
    Row("catalog: destination under a file", lambda f: ["catalog", "copy", "smollm2/SmolLM2-135M-Instruct",
                                                        str(f / "prompts.jsonl" / "x.toml")], 1,
        ["x.toml", "cannot write it"]),
    Row("catalog: destination exists", lambda f: ["catalog", "copy", "smollm2/SmolLM2-135M-Instruct", str(f / R)], 1,
        [R, "--force"]),
    # inspect
    Row("inspect: no such folder", lambda f: ["inspect", str(f / "nothing")], 1, ["nothing", "does not exist"]),
    Row("inspect: a file", lambda f: ["inspect", str(f / R)], 1, [R, "not a folder"]),
    Row("inspect: empty folder", lambda f: ["inspect", str(f / "adir")], 1, ["config.json", "not found"]),
    Row("inspect: config.json not JSON", lambda f: ["inspect", str(f / "draft")], 1,
        ["config.json", "not valid JSON"], draft_edit(lambda d: (d / "config.json").write_text("{oops"))),
    Row("inspect: config.json is a directory", lambda f: ["inspect", str(f / "draft")], 1,
        ["config.json", "is a directory"],
        draft_edit(lambda d: ((d / "config.json").unlink(), (d / "config.json").mkdir()))),
    Row("inspect: config.json lacks fields", lambda f: ["inspect", str(f / "draft")], 1,
        ["config.json", "hidden_size"], config_edit(lambda c: c.pop("hidden_size") and None)),
    Row("inspect: config.json is a list", lambda f: ["inspect", str(f / "draft")], 1,
        ["config.json", "expected a JSON object"], config_edit(lambda c: [c])),
    Row("inspect: no weights", lambda f: ["inspect", str(f / "draft")], 1, ["no *.safetensors file"],
        draft_edit(lambda d: (d / "model.safetensors").unlink())),
    Row("inspect: truncated safetensors", lambda f: ["inspect", str(f / "draft")], 1,
        ["model.safetensors", "not a readable safetensors file"], truncate("model.safetensors", 5000)),
    Row("inspect: binary safetensors", lambda f: ["inspect", str(f / "draft")], 1,
        ["model.safetensors", "not a readable safetensors file"],
        draft_edit(lambda d: (d / "model.safetensors").write_bytes(BINARY))),
    Row("inspect: wrong shape", lambda f: ["inspect", str(f / "draft")], 1, ["tensor fc.weight has shape"],
        tensors_edit(lambda t: t.__setitem__("fc.weight", torch.zeros(64, 7)))),
    Row("inspect: wrong dtype", lambda f: ["inspect", str(f / "draft")], 1,
        ["tensor norm.weight has dtype I64", "float"],
        tensors_edit(lambda t: t.__setitem__("norm.weight", torch.zeros(64, dtype=torch.int64)))),
    Row("inspect: missing tensor", lambda f: ["inspect", str(f / "draft")], 1, ["missing tensor lm_head.weight"],
        tensors_edit(lambda t: t.pop("lm_head.weight"))),
    # eval
    Row("eval: no such draft", eval_args(draft="nothing"), 1, ["nothing", "does not exist"]),
    Row("eval: broken draft", eval_args(draft="draft"), 1, ["missing tensor norm.weight", "would not load"],
        tensors_edit(lambda t: t.pop("norm.weight"))),
    Row("eval: no such base", eval_args(base="no-base"), 1, ["no-base", "no such model folder"]),
    Row("eval: base folder without config", eval_args(base="adir"), 1, ["adir", "no config.json"]),
    Row("eval: held-out split without a recipe", eval_args("--prompts", HELD_OUT_SPLIT), 1,
        [HELD_OUT_SPLIT, "held-out"]),
    Row("eval: no such prompt file", eval_args("--prompts", "{folder}/nope.jsonl"), 1,
        ["nope.jsonl", "file not found"]),
    Row("eval: prompts without a user turn", eval_args("--prompts", "{folder}/assistant.jsonl"), 1,
        ["assistant.jsonl", "no row with a user turn"], data("assistant.jsonl", ASSISTANT_ONLY)),
    Row("eval: binary prompt file", eval_args("--prompts", "{folder}/bin.jsonl"), 1, ["bin.jsonl", "not UTF-8"],
        data("bin.jsonl", BINARY)),
    Row("eval: unwritable report folder", eval_args("--out", "/proc/eagle-eval"), 1,
        ["/proc/eagle-eval", "cannot write there"]),
    Row("eval: zero draft tokens", eval_args("-k", "0"), 2, ["-k", "must be at least 1"]),
    # publish (refused before any network)
    Row("publish: broken draft", lambda f: ["publish", str(f / "draft"), "--repo-id", "me/x"], 1,
        ["not published", "missing tensor fc.weight"], tensors_edit(lambda t: t.pop("fc.weight"))),
    Row("publish: no such folder", lambda f: ["publish", str(f / "nothing"), "--repo-id", "me/x"], 1,
        ["nothing", "does not exist"]),
    Row("publish: no repository id", lambda f: ["publish", str(f / "good-draft")], 2, ["--repo-id"]),
]


@pytest.fixture(scope="module")
def good_folder(tmp_path_factory) -> Path:
    """A valid recipe with its files, a tiny base model and a draft that passes inspect: each row breaks one."""
    folder = tmp_path_factory.mktemp("good")
    (folder / R).write_text(GOOD)
    shutil.copy(SMOL_CONFIG, folder / "config.json")
    (folder / "prompts.jsonl").write_text('{"prompt": "What is two plus two?"}\n')
    (folder / "adir").mkdir()
    perm = permutation()
    build_permutation_target(folder / "base", perm)
    export_copy_draft(folder / "good-draft", folder / "base", perm)
    return folder


TAKES_NO_INPUT = {"schema", "draft-fields"}  # they print what the package holds; argparse refuses anything else


def test_the_table_covers_every_command():
    commands = {row.name.split(":")[0] for row in ROWS}
    assert commands == cli_commands() - TAKES_NO_INPUT
    assert len(ROWS) >= 40


@pytest.mark.parametrize("row", ROWS, ids=[row.name for row in ROWS])
def test_bad_input_gets_one_clear_message(row, good_folder, tmp_path):
    folder = tmp_path / "case"
    shutil.copytree(good_folder, folder)
    row.prepare(folder)
    result = subprocess.run([*CLI, *row.args(folder)], capture_output=True, text=True, timeout=120, cwd=folder)
    output = result.stdout + result.stderr
    assert result.returncode == row.status, output
    assert "Traceback" not in output, output
    for name in row.names:
        assert name in output, f"{name!r} not in:\n{output}"


def test_a_stage_failing_on_bad_data_names_the_file_and_line(good_folder, tmp_path):
    """Rows past validate's first look: the stage's own error reaches the user, without Ray's traceback."""
    folder = tmp_path / "case"
    shutil.copytree(good_folder, folder)
    (folder / "prompts.jsonl").write_text(ASSISTANT_ONLY * 3)
    result = subprocess.run([*CLI, "run", str(folder / R)], capture_output=True, text=True, timeout=600, cwd=folder)
    output = result.stdout + result.stderr
    assert result.returncode == 1, output
    assert "Traceback" not in output, output
    assert "prompts.jsonl: no usable conversation" in output and "prompts.jsonl line 1" in output, output
    assert RUN_SUMMARY in output  # where the whole traceback is kept
    assert not RunFolder(folder / "out").manifest_file(SYNTHESIZE).exists()


if __name__ == "__main__":  # pragma: no cover - print the table for a closing note
    for row in ROWS:
        print(f"{row.name} -> exit {row.status}, names {row.names}")
    sys.exit(0)
