"""`KEY=VALUE` overrides of a recipe on the command line (`eagle-recipes run r.toml train.lr=3e-4 train.max_steps=200`),
as torchtune's and ModelOpt's command lines take them.

KEY is a dotted recipe key; VALUE is a TOML value (`3e-4`, `true`, `["mt-bench"]`, `"text"`), and a bare word that
is not one is taken as a string (`train.optimizer=muon`, `model.path=org/model`). Overrides are applied to the
file's table before the schema sees it, so they are checked, defaulted and fingerprinted exactly as the same edit in
the file would be; a problem with one names it as given on the command line.
"""

from __future__ import annotations

import copy
import re
import tomllib
from dataclasses import dataclass
from typing import Any, Iterable

from eagle_recipes.recipe.errors import Problem

KEY_PART = re.compile(r"[A-Za-z0-9_-]+")
EXAMPLE = "write KEY=VALUE with a dotted recipe key, e.g. train.lr=3e-4"


@dataclass(frozen=True)
class Override:
    key: str  # dotted key path, e.g. "train.lr"
    value: Any
    text: str  # as given on the command line


def is_override(argument: str) -> bool:
    """Whether a command-line argument is an override rather than a recipe path."""
    return "=" in argument and not argument.endswith(".toml")


def parse_value(text: str) -> Any:
    """A TOML value, or the text itself where it is not one (a bare word)."""
    try:
        return tomllib.loads(f"value = {text}")["value"]
    except tomllib.TOMLDecodeError:
        return text


def parse_overrides(arguments: Iterable[str], file: str) -> tuple[list[Override], list[Problem]]:
    overrides, problems = [], []
    for text in arguments:
        key, equals, value = text.partition("=")
        key = key.strip()
        if not equals or not all(KEY_PART.fullmatch(part) for part in key.split(".")):
            problems.append(Problem(where(file, text), None, key, "not a KEY=VALUE override", EXAMPLE))
            continue
        overrides.append(Override(key, parse_value(value.strip()), text))
    return overrides, problems


def apply_overrides(raw: dict[str, Any], overrides: list[Override], file: str) -> tuple[dict[str, Any], list[Problem]]:
    """A copy of the file's table with every override set (tables created where the file has none)."""
    table, problems = copy.deepcopy(raw), []
    for override in overrides:
        node, parts = table, override.key.split(".")
        for depth, part in enumerate(parts[:-1]):
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                prefix = ".".join(parts[: depth + 1])
                problems.append(Problem(where(file, override.text), None, override.key,
                                        f"{prefix} is a value, not a table",
                                        f"override the whole value: {prefix}=..."))
                break
        else:
            node[parts[-1]] = override.value
    return table, problems


def where(file: str, text: str) -> str:
    return f"{file} (command line: {text})"


def relabel(problems: list[Problem], overrides: list[Override], file: str) -> list[Problem]:
    """Problems about an overridden key (or a key under it) point at the command line, not at the file's line."""
    def source(problem: Problem) -> Override | None:
        return next((o for o in reversed(overrides)
                     if problem.key == o.key or problem.key.startswith(o.key + ".")), None)

    relabelled = []
    for problem in problems:
        override = source(problem)
        relabelled.append(problem if override is None else
                          Problem(where(file, override.text), None, problem.key, problem.message, problem.hint))
    return relabelled
