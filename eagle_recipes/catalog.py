"""The catalog: tested recipes per model family (catalog/<family>/<model>.toml), listed, shown and copied."""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass
from pathlib import Path

from eagle_recipes.atomic import write_text
from eagle_recipes.draft.drafters import DEFAULT_DRAFTER
from eagle_recipes.errors import UserError
from eagle_recipes.paths import CATALOG_DIR, SCHEMA_PATH

NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9][A-Za-z0-9._-]*)?$")


class CatalogError(UserError):
    pass


@dataclass
class Entry:
    name: str  # "<family>/<model>"
    path: Path
    family: str
    model: str
    algorithm: str
    tested: str
    acceptance_length: float | None
    date: str
    checked: str = ""  # what `catalog check` found, with versions and date (written by it only)

    @property
    def checked_short(self) -> str:
        """`checked` up to its verdict: the date and versions, and "refused" where vLLM refused it."""
        if not self.checked:
            return "-"
        head = self.checked.split(":")[0]
        return head + (" (refused)" if "refused" in self.checked else "")


def entries(root: Path = CATALOG_DIR) -> list[Entry]:
    found = []
    for path in sorted(root.glob("*/*.toml")):
        with open(path, "rb") as handle:
            data = tomllib.load(handle)
        catalog = data.get("catalog", {})
        found.append(Entry(
            name=f"{path.parent.name}/{path.stem}", path=path, family=catalog.get("family", path.parent.name),
            model=data.get("model", {}).get("path", ""), algorithm=data.get("draft", {}).get("algorithm", DEFAULT_DRAFTER),
            tested=catalog.get("tested", "?"), acceptance_length=catalog.get("acceptance_length") or None,
            date=catalog.get("date", ""), checked=catalog.get("checked", "")))
    return found


def find(name: str, root: Path = CATALOG_DIR) -> Entry:
    """An entry by "family/model" or by its unique model part."""
    if not NAME.match(name) or ".." in name:
        raise CatalogError(f"'{name}' is not a catalog name (use family/model as `catalog list` shows)")
    matches = [e for e in entries(root) if e.name == name or e.name.split("/")[1] == name]
    if not matches:
        raise CatalogError(f"no catalog entry '{name}' (see `eagle-recipes catalog list`)")
    if len(matches) > 1:
        raise CatalogError(f"'{name}' is ambiguous: " + ", ".join(m.name for m in matches))
    return matches[0]


def copy(name: str, destination: Path | None, force: bool = False, root: Path = CATALOG_DIR) -> Path:
    """Write an editable copy: paths inside are rewritten to stay valid from the new place."""
    entry = find(name, root)
    destination = destination or Path.cwd() / f"{entry.path.stem}.toml"
    if destination.is_dir():
        destination = destination / f"{entry.path.stem}.toml"
    if destination.exists() and not force:
        raise CatalogError(f"{destination} exists; pass --force to overwrite it")
    text = entry.path.read_text(encoding="utf-8")
    text = _rebase_paths(text, entry.path.parent, destination.resolve().parent)
    try:
        destination.parent.mkdir(parents=True, exist_ok=True)
        write_text(destination, text)
    except OSError as error:
        raise CatalogError(f"{destination}: cannot write it ({error.strerror or error}); choose a writable path")
    return destination


def _rebase_paths(text: str, source: Path, target: Path) -> str:
    """Relative file paths in the recipe (config, prompt data, the schema line) are rewritten so that they stay
    valid from the copy's folder."""
    import os

    def rebase(match: re.Match) -> str:
        relative = match.group(1)
        if os.path.isabs(relative) or "/" not in relative or not _exists(source / relative):
            return match.group(0)  # not a path (a Hub id, a name, a sentence with a slash) or not one here
        return f'"{os.path.relpath((source / relative).resolve(), target)}"'

    text = re.sub(r"^(#:schema\s+)(\S+)", lambda m: m.group(1) + os.path.relpath(SCHEMA_PATH, target), text,
                  flags=re.M)
    return re.sub(r'"([^"\n]+)"', rebase, text)


def _exists(path: Path) -> bool:
    """Whether a string names an existing file; one too long to be a file name (a note in prose) names none."""
    try:
        return path.resolve().exists()
    except OSError:
        return False
