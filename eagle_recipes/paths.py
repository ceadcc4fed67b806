"""Where the project's own files live (schemas, catalog) and where caches go."""

from __future__ import annotations

import os
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[1]
SCHEMA_PATH = PROJECT_ROOT / "schemas" / "recipe.schema.json"
CATALOG_DIR = PROJECT_ROOT / "catalog"


def cache_dir() -> Path:
    """Models converted once (GGUF -> safetensors) and wheels fetched from PyPI land here."""
    root = os.environ.get("EAGLE_RECIPES_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "eagle-recipes"
    )
    path = Path(root)
    path.mkdir(parents=True, exist_ok=True)
    return path
