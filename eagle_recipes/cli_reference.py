"""docs/cli.md, written from the parser that `eagle-recipes --help` prints (cli.build_parser), so the reference cannot
drift from the commands: `python -m eagle_recipes.cli_reference > docs/cli.md` (or `make docs`) writes it, and
tests/test_docs.py fails when the file differs from what the parser gives now."""

from __future__ import annotations

import argparse
import os
import sys
from contextlib import contextmanager

from eagle_recipes.cli import build_parser

WIDTH = 110  # argparse wraps help to the terminal's width: a fixed one makes the page the same on every machine

HEADER = """# Command-line reference

Generated from the parser that `eagle-recipes --help` prints (`eagle_recipes/cli_parser.py`, as `eagle_recipes/cli.py` builds it). Do not
edit it by hand: `make docs` (or `python -m eagle_recipes.cli_reference > docs/cli.md`) writes it again, and
`tests/test_docs.py` fails when this page differs from what the parser gives.

Every command that reads a recipe also takes `KEY=VALUE` overrides after it (see
[the recipe language](recipes.md#overrides-on-the-command-line)); exit codes are 0 (done), 1 (a problem, named in
one line) and 2 (a usage error).
"""


@contextmanager
def fixed_terminal():
    """argparse reads COLUMNS for its width (and, on newer Pythons, colour settings): pin both while rendering."""
    saved = {key: os.environ.get(key) for key in ("COLUMNS", "NO_COLOR", "FORCE_COLOR", "PYTHON_COLORS")}
    os.environ.update(COLUMNS=str(WIDTH), NO_COLOR="1")
    for key in ("FORCE_COLOR", "PYTHON_COLORS"):
        os.environ.pop(key, None)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def commands(parser: argparse.ArgumentParser,
             prefix: str = "eagle-recipes") -> list[tuple[str, argparse.ArgumentParser]]:
    """(full command, its parser) for the parser and every subcommand under it, in the order the parser lists them."""
    found = [(prefix, parser)]
    for action in parser._actions:  # noqa: SLF001 - argparse keeps its subcommands nowhere public
        if isinstance(action, argparse._SubParsersAction):  # noqa: SLF001
            for name, sub in action.choices.items():
                found += commands(sub, f"{prefix} {name}")
    return found


def anchor(title: str) -> str:
    """The anchor GitHub gives a heading made of words, spaces and hyphens."""
    return title.lower().replace(" ", "-")


def render(parser: argparse.ArgumentParser | None = None) -> str:
    """The whole page, from `parser` (default: the CLI's own)."""
    with fixed_terminal():
        found = commands(parser or build_parser())
        listed = ", ".join(f"[{name.removeprefix('eagle-recipes ')}](#{anchor(name)})" for name, _ in found[1:])
        lines = [HEADER, f"Commands: {listed}.", ""]
        for name, sub in found:
            lines += [f"## {name}", "", "```text", sub.format_help().rstrip(), "```", ""]
    return "\n".join(lines)


def main() -> int:
    sys.stdout.write(render())
    return 0


if __name__ == "__main__":
    sys.exit(main())
