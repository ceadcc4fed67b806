"""Map dotted TOML key paths to line numbers.

tomllib gives values but no positions, and no maintained TOML library exposes them, so this small scanner
records where each key and table is written. It only needs to be good enough to point a person at a line.
"""

from __future__ import annotations

import re

_TABLE = re.compile(r"^\s*(\[\[?)\s*([^\]]+?)\s*\]\]?\s*(#.*)?$")
_KEY = re.compile(r"""^\s*((?:[A-Za-z0-9_-]+|"[^"]*"|'[^']*')(?:\s*\.\s*(?:[A-Za-z0-9_-]+|"[^"]*"|'[^']*'))*)\s*=""")
_INLINE_KEY = re.compile(r"""[{,]\s*([A-Za-z0-9_-]+|"[^"]*")\s*=""")


def _split_key(text: str) -> list[str]:
    parts = re.findall(r"""[A-Za-z0-9_-]+|"[^"]*"|'[^']*'""", text)
    return [part.strip("\"'") for part in parts]


def key_lines(text: str) -> dict[str, int]:
    """Return {"section.key": line} for every table header and key assignment (1-based lines)."""
    lines: dict[str, int] = {}
    prefix: list[str] = []
    array_counts: dict[str, int] = {}
    in_multiline: str | None = None
    for number, line in enumerate(text.splitlines(), start=1):
        if in_multiline:
            if line.count(in_multiline) % 2 == 1:
                in_multiline = None
            continue
        table = _TABLE.match(line)
        if table and not line.lstrip().startswith(("[\"", "['")) and "=" not in line.split("]")[0]:
            prefix = _split_key(table.group(2))
            path = ".".join(prefix)
            if table.group(1) == "[[":
                index = array_counts.get(path, 0)
                array_counts[path] = index + 1
                prefix = prefix + [str(index)]
            lines.setdefault(path, number)
            lines.setdefault(".".join(prefix), number)
            continue
        key = _KEY.match(line)
        if key:
            path = ".".join(prefix + _split_key(key.group(1)))
            lines.setdefault(path, number)
            rest = line[key.end():]
            for inline in _INLINE_KEY.finditer(rest):
                lines.setdefault(f"{path}.{inline.group(1).strip(chr(34))}", number)
            for quote in ('"""', "'''"):
                if rest.count(quote) % 2 == 1:
                    in_multiline = quote
    return lines


def line_of(lines: dict[str, int], key_path: str) -> int | None:
    """The line of `key_path`, or of its nearest written parent (a missing key points at its table)."""
    parts = key_path.split(".") if key_path else []
    while parts:
        found = lines.get(".".join(parts))
        if found:
            return found
        parts.pop()
    return None
