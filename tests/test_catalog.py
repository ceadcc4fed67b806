"""`eagle-recipes catalog list/show/copy`."""

from __future__ import annotations

import subprocess
import sys

import pytest

from eagle_recipes.recipe import validate_file

pytestmark = pytest.mark.slow  # real processes, engines or graph runs: `make test-fast` leaves these out

CLI = [sys.executable, "-m", "eagle_recipes.cli", "catalog"]


def run(*args, cwd=None):
    return subprocess.run([*CLI, *map(str, args)], capture_output=True, text=True, cwd=cwd)


def test_list_shows_every_family_and_what_was_tested():
    out = run("list")
    assert out.returncode == 0
    for name in ("smollm2/SmolLM2-135M-Instruct", "llama3/Llama-3.1-8B-Instruct", "qwen3/Qwen3-30B-A3B",
                 "mistral/Mistral-7B-Instruct-v0.3", "gemma3/gemma-3-1b-it", "phi4/phi-4",
                 "deepseek/DeepSeek-R1-Distill-Llama-8B", "qwen2.5/Qwen2.5-7B-Instruct"):
        assert name in out.stdout, name
    assert all(tested in out.stdout for tested in ("e2e-cpu", "architecture-cpu", "refused"))


def test_show_prints_the_recipe():
    out = run("show", "Qwen3-8B")
    assert out.returncode == 0 and 'path = "Qwen/Qwen3-8B"' in out.stdout and "[catalog]" in out.stdout


def test_copy_writes_an_editable_valid_recipe_and_refuses_to_overwrite(tmp_path):
    destination = tmp_path / "mine" / "llama.toml"
    first = run("copy", "llama3/Llama-3.1-8B-Instruct", destination)
    assert first.returncode == 0 and destination.exists()
    text = destination.read_text()
    assert text.startswith("#:schema ") and "schemas/recipe.schema.json" in text
    recipe, problems = validate_file(destination)
    assert not problems, [str(p) for p in problems]  # relative paths were rewritten for the new place
    again = run("copy", "llama3/Llama-3.1-8B-Instruct", destination)
    assert again.returncode == 1 and "--force" in again.stderr
    assert run("copy", "llama3/Llama-3.1-8B-Instruct", destination, "--force").returncode == 0


def test_copy_into_the_current_folder(tmp_path):
    assert run("copy", "SmolLM2-360M-Instruct", cwd=tmp_path).returncode == 0
    assert (tmp_path / "SmolLM2-360M-Instruct.toml").exists()


def test_names_are_validated():
    for bad in ("../../etc/passwd", "/abs/path", "a/b/c", "nope/Nothing"):
        out = run("show", bad)
        assert out.returncode == 1 and "error:" in out.stderr and "Traceback" not in out.stderr
