"""Where prompt data comes from: files (JSONL or Parquet) and datasets by name: a Hugging Face Hub id or a local
folder in the Hub's layout (Parquet/JSON files, optionally a README.md whose `configs:` name subsets and splits).

Datasets are read with Hugging Face `datasets`, the library that knows the Hub's layouts, subsets, splits and
revisions: a local folder is streamed (never copied, never loaded whole), a Hub dataset is downloaded once into the
Hugging Face cache and memory-mapped from there (a rerun downloads nothing; HF_HUB_OFFLINE=1 reads the cache alone).
When the Hub cannot be reached, reading fails at once with a message naming the recipe key, not after the
library's retries.
"""

from __future__ import annotations

import os
import re
import socket
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator
from urllib.parse import urlsplit

from eagle_recipes.errors import UserError

HUB_ID = re.compile(r"^[A-Za-z0-9][\w.\-]*/[\w.\-]+$")
DATA_SUFFIXES = (".parquet", ".jsonl", ".json", ".arrow", ".csv")


class SourceError(UserError):
    """A dataset that cannot be read (names the recipe key and what to do)."""


@dataclass(frozen=True)
class DatasetSource:
    """One `data.prompts` table: `{ dataset = ..., split = ..., subset, column, max_rows, revision, weight }`."""

    dataset: str  # a Hub id, or a local folder (made absolute against the recipe's folder)
    key: str  # the recipe key, for messages: data.prompts.N
    split: str = "train"
    subset: str | None = None
    column: str | None = None  # the column holding the conversation or prompt (default: detected)
    max_rows: int = 0  # read at most this many rows (0: all)
    revision: str | None = None  # a Hub branch, tag or commit (pinning it pins the fingerprint)
    weight: float | None = None  # share of data.max_samples in a mixture

    @property
    def is_local(self) -> bool:
        return Path(self.dataset).is_dir()

    @property
    def label(self) -> str:
        name = Path(self.dataset).name if self.is_local else self.dataset
        return f"{name}[{self.subset + '/' if self.subset else ''}{self.split}]"

    def data_files(self) -> list[Path]:
        """A local folder's data files (what its fingerprint covers); none for a Hub id."""
        if not self.is_local:
            return []
        folder = Path(self.dataset)
        return sorted(p for p in folder.rglob("*") if p.is_file() and (p.suffix in DATA_SUFFIXES or p.name == "README.md")
                      and not any(part.startswith(".") for part in p.relative_to(folder).parts))


def source_of(entry: Any, key: str, resolve) -> Path | DatasetSource:
    """A `data.prompts` entry: a string is a file path; a table names a dataset (`resolve` makes paths absolute)."""
    if isinstance(entry, str):
        return resolve(entry)
    table = dict(entry)
    local = resolve(table["dataset"])
    if local.is_dir() or not HUB_ID.match(table["dataset"]):
        table["dataset"] = str(local)
    return DatasetSource(key=key, **table)


def shape_problem(source: DatasetSource) -> str:
    """What validate can tell offline: '' when the entry looks readable."""
    if source.is_local:
        return "" if source.data_files() else (f"{source.dataset}: no data files (Parquet, JSON Lines, JSON, Arrow or "
                                               "CSV) in the folder")
    if not HUB_ID.match(source.dataset):
        return (f"{source.dataset!r} is neither a local folder nor a Hub dataset id (owner/name); give the folder's "
                "path (relative to the recipe) or the id")
    return ""


# ---------------------------------------------------------------- the Hub
def hub_reachable(timeout_s: float = 3.0) -> bool:
    """Whether the Hub's host answers (False under HF_HUB_OFFLINE); seconds, not the client's minutes of retries."""
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes"):
        return False
    endpoint = urlsplit(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    try:
        socket.create_connection((endpoint.hostname, endpoint.port or 443), timeout=timeout_s).close()
        return True
    except OSError:
        return False


@contextmanager
def offline_hub():
    """The Hub clients' offline switches on for this block (they read the environment only when imported)."""
    import datasets
    import huggingface_hub

    saved = (huggingface_hub.constants.HF_HUB_OFFLINE, datasets.config.HF_HUB_OFFLINE)
    huggingface_hub.constants.HF_HUB_OFFLINE = datasets.config.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        huggingface_hub.constants.HF_HUB_OFFLINE, datasets.config.HF_HUB_OFFLINE = saved


def resolved_revision(source: DatasetSource) -> str | None:
    """The commit a Hub dataset was read at, from the Hugging Face cache (None for a local folder or when unknown)."""
    if source.is_local:
        return None
    if source.revision and re.fullmatch(r"[0-9a-f]{40}", source.revision):
        return source.revision
    from huggingface_hub import constants

    owner, name = source.dataset.split("/", 1)
    ref = Path(constants.HF_HUB_CACHE) / f"datasets--{owner}--{name}" / "refs" / (source.revision or "main")
    return ref.read_text().strip() if ref.is_file() else None


# ---------------------------------------------------------------- rows
def dataset_rows(source: DatasetSource) -> Iterator[tuple[int, Any]]:
    """(row number, row) of the source's split, at most max_rows; the column, when named, as the row's content."""
    dataset = _open(source)
    for number, row in enumerate(dataset, start=1):
        if source.max_rows and number > source.max_rows:
            return
        yield number, _as_row(row, source.column) if source.column else row


def _open(source: DatasetSource):
    from datasets import load_dataset

    kwargs = dict(name=source.subset, split=source.split)
    try:
        if source.is_local:  # streamed: the folder is never copied or loaded whole
            return load_dataset(source.dataset, streaming=True, **kwargs)
        if hub_reachable():
            return load_dataset(source.dataset, revision=source.revision, **kwargs)
        with offline_hub():  # the cache, or a named failure now
            return load_dataset(source.dataset, revision=source.revision, **kwargs)
    except Exception as error:  # noqa: BLE001 - the library raises many types; the user needs the key and a fix
        raise SourceError(_unreadable(source, error)) from None


def _unreadable(source: DatasetSource, error: Exception) -> str:
    message = f"{source.key}: cannot read {source.label} ({type(error).__name__}: {str(error).splitlines()[0][:300]})"
    if source.is_local:
        return message + "; check subset and split against the folder's README.md configs or its file names"
    if not hub_reachable():
        return (message + "; the Hub is unreachable and the dataset is not in the Hugging Face cache: read it once "
                "where the Hub is reachable (then HF_HUB_OFFLINE=1 uses the cache), or download it and give its "
                "local folder as `dataset`")
    return message + "; check the dataset id, subset, split and revision (and HF_TOKEN for a gated dataset)"


def _as_row(row: dict, column: str) -> dict:
    """The named column as a row the format detection knows: a list of turns, or a prompt string."""
    if column not in row:
        return {"__missing_column__": column}
    value = row[column]
    if isinstance(value, str):
        return {"prompt": value}
    if isinstance(value, list) and value and isinstance(value[0], dict) and "from" in value[0]:
        return {"conversations": value}
    return {"messages": value}


def count_rows(source: DatasetSource) -> int | None:
    """Rows of a local folder's split from its Parquet metadata (cheap), capped by max_rows; None when unknown."""
    if not source.is_local:
        return source.max_rows or None
    try:
        from datasets import load_dataset_builder

        files = load_dataset_builder(source.dataset, source.subset).config.data_files.get(source.split, [])
        if not files or not all(str(f).endswith(".parquet") for f in files):
            return source.max_rows or None
        import pyarrow.parquet as pq

        rows = sum(pq.ParquetFile(str(f)).metadata.num_rows for f in files)
    except Exception:  # noqa: BLE001 - plan shows "unknown" rather than failing on a layout it cannot read
        return source.max_rows or None
    return min(rows, source.max_rows) if source.max_rows else rows
