"""Where the project's own files live (schemas, catalog) and where caches go."""

from __future__ import annotations

import os
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[1]


def _shipped(folder: str, packaged: str) -> Path:
    """A folder of the project's own files: the source tree's (a checkout, an editable install), else the copy a
    wheel ships inside the package (pyproject.toml maps it there)."""
    source = PROJECT_ROOT / folder
    return source if source.is_dir() else Path(__file__).resolve().parent / packaged


SCHEMA_PATH = _shipped("schemas", "_schemas") / "recipe.schema.json"
CATALOG_DIR = _shipped("catalog", "_catalog")


def cache_dir() -> Path:
    """Models converted once (GGUF -> safetensors) and wheels fetched from PyPI land here."""
    root = os.environ.get("EAGLE_RECIPES_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "eagle-recipes"
    )
    path = Path(root)
    path.mkdir(parents=True, exist_ok=True)
    return path


def ensure_writable_folder(folder: Path, how_to_fix: str) -> None:
    """Create `folder` if needed and prove it takes a file (raises UserError naming it and how to fix it)."""
    from eagle_recipes.errors import UserError

    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as error:
        raise UserError(f"{folder}: cannot write there ({error.strerror or error}); {how_to_fix}") from None
