"""The `[tune]` table's search space: recipe keys to the values a tune tries (`space = { "train.lr" = [3e-4, 1e-3] }`).

Each value is checked as the same `key=value` override would be (the whole recipe validated with it), so a bad one is
refused before any trial runs, naming the file, the space's line and the key. The space expands into trials: the
grid of every combination, or a seeded sample of it, always with the recipe as written first (the baseline every
margin is measured against).
"""

from __future__ import annotations

import itertools
import random
from typing import Any, Callable

from eagle_recipes.recipe.errors import Problem
from eagle_recipes.recipe.overrides import Override, apply_overrides
from eagle_recipes.recipe.toml_lines import line_of

# Trials reuse the run's features (synthesize, calibrate, capture): only what training reads can vary.
TUNABLE_TABLES = ("train", "draft")
SAMPLE_SEED = 0


def space_label(key: str) -> str:
    return f'tune.space."{key}"'


def toml_value(value: Any) -> str:
    """`value` as TOML writes it (what `key=VALUE` on the command line takes)."""
    import tomli_w  # here: machines that only train import this package without it

    return tomli_w.dumps({"value": value}).split("=", 1)[1].strip()


def override_text(key: str, value: Any) -> str:
    return f"{key}={toml_value(value)}"


def space_problems(raw: dict[str, Any], file: str, lines: dict[str, int],
                   problems_of: Callable[[dict[str, Any]], list[Problem]]) -> list[Problem]:
    """Problems of every (key, value) of the space: those the recipe has with the value set and not without it.
    `problems_of(table)` validates a whole recipe table (the loader's checks)."""
    space = raw.get("tune", {}).get("space", {})
    if not space:
        return []
    base = {name: table for name, table in raw.items() if name != "tune"}
    before = {(p.key, p.message) for p in problems_of(base)}
    problems = []
    for key, values in space.items():
        line = line_of(lines, f"tune.space.{key}")
        if key.split(".")[0] not in TUNABLE_TABLES:
            problems.append(Problem(file, line, space_label(key), "not a train.* or draft.* key",
                                    "trials share the run's data and features: search keys of [train] and [draft]"))
            continue
        for value in values:
            table, misplaced = apply_overrides(base, [Override(key, value, override_text(key, value))], file)
            found = misplaced or [p for p in problems_of(table) if (p.key, p.message) not in before]
            problems += [Problem(file, line, space_label(key), f"{toml_value(value)}: {p.key}: {p.message}", p.hint)
                         for p in found]
    return problems


def tune_refusals(raw: dict[str, Any], file: str, lines: dict[str, int]) -> list[Problem]:
    """What `tune` alone refuses (other commands ignore the [tune] table): features its trials cannot share."""
    from eagle_recipes.recipe.schema import default_of
    from eagle_recipes.training.features import FEATURE_MODES

    name = raw.get("train", {}).get("features", default_of("train.features"))
    refusal = FEATURE_MODES[name].tune_refusal if name in FEATURE_MODES else None  # an unknown name: the schema's
    if refusal is None:
        return []
    usable = " or ".join(f'"{other}"' for other, mode in FEATURE_MODES.items() if mode.tune_refusal is None)
    return [Problem(file, line_of(lines, "train.features"), "train.features", refusal,
                    f"tune with train.features = {usable}; the best recipe can then train {name}")]


def value_at(data: dict[str, Any], key: str, default: Any = None) -> Any:
    node: Any = data
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return default
        node = node[part]
    return node


def written_settings(space: dict[str, list], data: dict[str, Any], draft_defaults: dict[str, Any]) -> dict[str, Any]:
    """What the recipe as written (defaults applied) sets for every key of the space; a draft override it leaves
    out is the drafter's default."""
    settings = {}
    for key in space:
        fallback = draft_defaults.get(key.removeprefix("draft.overrides.")) if key.startswith("draft.overrides.") \
            else None
        settings[key] = value_at(data, key, fallback)
    return settings


def expand(space: dict[str, list], as_written: dict[str, Any], limit: int = 0) -> list[dict[str, Any]]:
    """The trials' settings: the recipe as written, then the grid's other combinations (all of them, or a seeded
    sample so that there are `limit` trials in all)."""
    keys = list(space)
    grid = [dict(zip(keys, combination)) for combination in itertools.product(*(space[k] for k in keys))]
    others = [settings for settings in grid if settings != as_written]
    if limit and len(others) + 1 > limit:
        others = random.Random(SAMPLE_SEED).sample(others, max(0, limit - 1))
    return [dict(as_written), *others]
