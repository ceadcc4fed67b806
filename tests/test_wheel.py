"""The package installs as a wheel: built from this tree, installed with no source tree beside it, it finds its
schema and its catalog (shipped inside the package), lists the catalog, and copies and validates an entry."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile

import pytest

from tests.helpers import PROJECT

pytestmark = pytest.mark.slow  # real processes, engines or graph runs: `make test-fast` leaves these out


def test_a_built_wheel_validates_a_catalog_recipe_without_the_source_tree(tmp_path):
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                            "-w", str(tmp_path / "dist"), str(PROJECT)], capture_output=True, text=True, timeout=600)
    assert built.returncode == 0, built.stderr[-3000:]
    (wheel,) = (tmp_path / "dist").glob("eagle_recipes-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    sources = {str(p.relative_to(PROJECT)) for p in (PROJECT / "eagle_recipes").rglob("*.py")}
    assert sources <= names, f"pyproject.toml lists no package for {sorted(sources - names)[:5]}"
    assert "eagle_recipes/_schemas/recipe.schema.json" in names
    entries = {str(p.relative_to(PROJECT / "catalog")) for p in (PROJECT / "catalog").rglob("*") if p.is_file()}
    assert {f"eagle_recipes/_catalog/{entry}" for entry in entries} <= names

    site = tmp_path / "site"
    installed = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(site),
                                str(wheel)], capture_output=True, text=True, timeout=600)
    assert installed.returncode == 0, installed.stderr[-3000:]
    work = tmp_path / "elsewhere"  # no source tree here, nor on the path
    work.mkdir()
    env = {**os.environ, "PYTHONPATH": str(site)}

    def cli(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "eagle_recipes.cli", *args], cwd=work, env=env,
                              capture_output=True, text=True, timeout=600)

    where = subprocess.run([sys.executable, "-c", "import eagle_recipes.paths as p; print(p.__file__, p.SCHEMA_PATH)"],
                           cwd=work, env=env, capture_output=True, text=True)
    assert where.stdout.startswith(str(site)) and "_schemas" in where.stdout, where.stdout + where.stderr
    listed = cli("catalog", "list")
    assert listed.returncode == 0 and "qwen3/Qwen3-0.6B" in listed.stdout, listed.stdout + listed.stderr
    copied = cli("catalog", "copy", "qwen3/Qwen3-0.6B", "mine.toml")
    assert copied.returncode == 0, copied.stdout + copied.stderr
    valid = cli("validate", "mine.toml")
    assert valid.returncode == 0 and "mine.toml: valid" in valid.stdout, valid.stdout + valid.stderr

