"""A draft folder on disk: its config.json and tensors, and our nn.Module loaded from it in any layout."""

from __future__ import annotations

import json
from pathlib import Path

from eagle_recipes.draft.layouts.common import LayoutError


def read_config(folder: Path) -> dict:
    """config.json of a draft folder (raises LayoutError naming the file)."""
    path = folder / "config.json"
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise LayoutError(f"{path}: not found (is {folder} a draft folder?)") from None
    except IsADirectoryError:
        raise LayoutError(f"{path}: is a directory, expected a JSON file") from None
    except (OSError, UnicodeDecodeError) as error:
        raise LayoutError(f"{path}: cannot read it ({error})") from None
    except ValueError as error:
        raise LayoutError(f"{path}: not valid JSON ({error})") from None
    if not isinstance(config, dict):
        raise LayoutError(f"{path}: expected a JSON object, found {type(config).__name__}")
    return config


def read_tensors(folder: Path) -> dict:
    """Every tensor of a draft folder's *.safetensors files, names as written."""
    from safetensors.torch import load_file

    tensors = {}
    for path in sorted(folder.glob("*.safetensors")):
        tensors.update(load_file(str(path)))
    return tensors
