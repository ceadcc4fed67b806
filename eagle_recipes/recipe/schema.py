"""The JSON Schema is the one source of truth: field types, descriptions and defaults are read from it."""

from __future__ import annotations

import copy
import json
from functools import lru_cache
from typing import Any

from eagle_recipes.paths import SCHEMA_PATH


@lru_cache(maxsize=1)
def load_schema() -> dict:
    with open(SCHEMA_PATH, encoding="utf-8") as handle:
        return json.load(handle)


def _resolve(schema: dict, node: dict) -> dict:
    ref = node.get("$ref")
    if ref and ref.startswith("#/$defs/"):
        return schema["$defs"][ref.split("/")[-1]]
    return node


def apply_defaults(data: dict, node: dict | None = None, schema: dict | None = None) -> dict:
    """Return a copy of `data` with every omitted field set to the schema's default (tables recursively).

    Optional tables that the recipe omits are filled too, so code can always read `recipe.train.lr`.
    The `catalog` table stays absent unless written (it only describes catalog entries).
    """
    schema = schema or load_schema()
    node = _resolve(schema, node or schema)
    result = copy.deepcopy(data)
    for name, child in node.get("properties", {}).items():
        child = _resolve(schema, child)
        if child.get("type") == "object" and "properties" in child:
            if name == "catalog" and name not in result:
                continue
            if name not in result or isinstance(result[name], dict):
                result[name] = apply_defaults(result.get(name, {}), child, schema)
        elif name not in result and "default" in child:
            result[name] = copy.deepcopy(child["default"])
    return result


def field_names(path: str) -> list[str]:
    """Names of the fields allowed at a dotted path of tables ("" for the top level)."""
    schema = load_schema()
    node = schema
    for part in [p for p in path.split(".") if p]:
        node = _resolve(schema, node).get("properties", {}).get(part, {})
    return sorted(_resolve(schema, node).get("properties", {}))


def table_defaults(name: str) -> dict[str, Any]:
    """A top-level table as a recipe that omits it gets it: every field at the schema's default."""
    return apply_defaults({})[name]


def default_of(path: str) -> Any:
    schema = load_schema()
    node: dict = schema
    for part in path.split("."):
        node = _resolve(schema, node)["properties"][part]
    return copy.deepcopy(_resolve(schema, node).get("default"))
