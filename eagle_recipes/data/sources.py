"""Where training data comes from. Every source is a `Source`: a file (JSONL or Parquet) or a dataset by name
(a Hugging Face Hub id, or a local folder in the Hub's layout: Parquet/JSON files, optionally a README.md whose
`configs:` name subsets and splits). Readers ask a source for its rows, its label, the files its fingerprint
covers and what the plan shows; none of them tells the kinds apart, so the next kind (object storage, say) is one
more class here and one more branch in `source_of`.

Datasets are read with Hugging Face `datasets`, the library that knows the Hub's layouts, subsets, splits and
revisions: a local folder is streamed (never copied, never loaded whole), a Hub dataset is downloaded once into the
Hugging Face cache and memory-mapped from there (a rerun downloads nothing; HF_HUB_OFFLINE=1 reads the cache alone).
When the Hub cannot be reached, reading fails at once with a message naming the recipe key, not after the
library's retries.
"""

from __future__ import annotations

import json
import os
import re
import socket
from abc import ABC, abstractmethod
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator
from urllib.parse import urlsplit

from eagle_recipes.data.formats import DataFormatError
from eagle_recipes.errors import UserError

HUB_ID = re.compile(r"^[A-Za-z0-9][\w.\-]*/[\w.\-]+$")
DATA_SUFFIXES = (".parquet", ".jsonl", ".json", ".arrow", ".csv")


class SourceError(UserError):
    """A dataset that cannot be read (names the recipe key and what to do)."""


class Source(ABC):
    """One entry of `data.prompts` or `data.conversations`: what every reader of training data asks of it."""

    key: str  # the recipe key, for messages: data.prompts.N
    weight: float | None = None  # share of data.max_samples in a mixture (None: no share asked)
    row_unit: str = "row"  # what one row is called in messages ("line 3" of a file, "row 12" of a dataset)
    quick_to_peek: bool = False  # its first rows read in a blink, offline (validate looks at them)

    @property
    @abstractmethod
    def label(self) -> str:
        """The source's name in messages, the plan and the manifest."""

    @property
    def location(self) -> str:
        """Where the source is, as an error message names it (a file: its whole path)."""
        return self.label

    @abstractmethod
    def rows(self) -> Iterator[tuple[int, Any]]:
        """(row number, row) in the source's order: a dict, or the parse error of a broken row."""

    @abstractmethod
    def input_files(self) -> list[Path]:
        """The local files a run's fingerprint covers (none for data identified otherwise, e.g. a Hub revision)."""

    def local_path(self) -> Path | None:
        """The file or folder that validate checks and a cluster submission sends (None: nothing local)."""
        return None

    @property
    def path_key(self) -> str:
        """The recipe key holding that path (messages about the path name it)."""
        return self.key

    def problem(self) -> str:
        """What validate can tell offline, without reading the data: '' when the source looks readable."""
        return ""

    def row_count(self) -> int | None:
        """Rows, when known cheaply (for plan and the size estimate); None when known only once read."""
        return None

    def describe(self) -> str:
        """The source as plan shows it."""
        rows = self.row_count()
        return f"{self.label} ({f'{rows:,} rows' if rows else 'rows known once read'})"

    def record(self) -> dict:
        """What the manifest keeps of the source beyond its label (a Hub dataset: the commit it was read at)."""
        return {}


@dataclass(frozen=True)
class FileSource(Source):
    """A JSONL or Parquet file (a recipe's path made absolute against the recipe's folder)."""

    path: Path
    key: str
    row_unit = "line"
    quick_to_peek = True

    @property
    def label(self) -> str:
        return self.path.name

    @property
    def location(self) -> str:
        return str(self.path)

    def rows(self) -> Iterator[tuple[int, Any]]:
        if not self.path.exists():
            raise DataFormatError(f"{self.path}: file not found")
        return file_rows(self.path)

    def input_files(self) -> list[Path]:
        return [self.path]

    def local_path(self) -> Path:
        return self.path

    def row_count(self) -> int | None:
        try:
            if self.path.suffix == ".parquet":
                import pyarrow.parquet as pq

                return pq.ParquetFile(self.path).metadata.num_rows
            with open(self.path, "rb") as handle:
                return sum(1 for line in handle if line.strip())
        except Exception:  # noqa: BLE001 - a missing or damaged file: unknown here, validate names it
            return None

    def describe(self) -> str:
        return self.label


@dataclass(frozen=True)
class DatasetSource(Source):
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

    def input_files(self) -> list[Path]:
        """A local folder's data files (what its fingerprint covers); none for a Hub id (its revision is)."""
        if not self.is_local:
            return []
        folder = Path(self.dataset)
        return sorted(p for p in folder.rglob("*") if p.is_file() and (p.suffix in DATA_SUFFIXES or p.name == "README.md")
                      and not any(part.startswith(".") for part in p.relative_to(folder).parts))

    def local_path(self) -> Path | None:
        return Path(self.dataset) if self.is_local else None

    @property
    def path_key(self) -> str:
        return f"{self.key}.dataset"

    def rows(self) -> Iterator[tuple[int, Any]]:
        return dataset_rows(self)

    def problem(self) -> str:
        if self.is_local:
            return "" if self.input_files() else (f"{self.dataset}: no data files (Parquet, JSON Lines, JSON, Arrow or "
                                                  "CSV) in the folder")
        if not HUB_ID.match(self.dataset):
            return (f"{self.dataset!r} is neither a local folder nor a Hub dataset id (owner/name); give the folder's "
                    "path (relative to the recipe) or the id")
        return ""

    def row_count(self) -> int | None:
        return count_rows(self)

    def describe(self) -> str:
        rows = self.row_count()
        where = "local" if self.is_local else f"Hub{'@' + self.revision if self.revision else ''}"
        bound = "" if self.is_local else "up to "
        return (f"{self.label} ({where}, {f'{bound}{rows:,} rows' if rows else 'rows known once read'}"
                + (f", weight {self.weight:g}" if self.weight else "") + ")")

    def record(self) -> dict:
        if self.is_local:
            return {}
        return {"dataset": self.dataset, "revision": self.revision, "commit": resolved_revision(self)}


def file_rows(path: Path) -> Iterator[tuple[int, Any]]:
    """(line number, parsed row or the JSON error) for JSONL; (row number, row) for Parquet."""
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        try:  # batch by batch: a large file is never held whole
            batches = pq.ParquetFile(path).iter_batches(batch_size=4096)
            number = 0
            for batch in batches:
                for row in batch.to_pylist():
                    number += 1
                    yield number, row
        except Exception as error:  # noqa: BLE001 - pyarrow raises several types for a damaged file
            raise DataFormatError(f"{path}: not a readable Parquet file ({str(error)[:200]})") from None
        return
    number = 0
    try:
        with open(path, encoding="utf-8") as handle:
            for number, line in enumerate(handle, start=1):
                if not line.strip():
                    continue
                try:
                    yield number, json.loads(line)
                except json.JSONDecodeError as error:
                    yield number, error
    except UnicodeDecodeError:
        raise DataFormatError(f"{path}: not UTF-8 text (after line {number}); data files are JSONL (one JSON object "
                              "per line) or Parquet") from None
    except IsADirectoryError:
        raise DataFormatError(f"{path}: a directory, expected a JSONL or Parquet file") from None
    except OSError as error:
        raise DataFormatError(f"{path}: cannot read it ({error.strerror or error})") from None




def source_of(entry: str | dict, key: str, resolve) -> Source:
    """A recipe entry as a source: a string is a file path; a table names a dataset (`resolve` makes paths
    absolute against the recipe's folder)."""
    if isinstance(entry, str):
        return FileSource(resolve(entry), key)
    table = dict(entry)
    local = resolve(table["dataset"])
    if local.is_dir() or not HUB_ID.match(table["dataset"]):
        table["dataset"] = str(local)
    return DatasetSource(key=key, **table)


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
    """(row number, row) of the source's split, at most max_rows; the column, when named, as the row's content.
    A local folder whose split is Parquet is read by pyarrow, batch by batch, in the order `datasets` reads it:
    the library's streaming reader holds about 300 MiB more for the same rows (benchmarks/data_sources.py)."""
    files = _parquet_files(source)
    dataset = _parquet_rows(files) if files else _open(source)
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


def _parquet_files(source: DatasetSource) -> list[str] | None:
    """A local folder's split as `datasets` resolves it (README configs, file names), when every file is Parquet;
    None otherwise (a Hub id, other formats, or a layout the library refuses: `_open` then names the problem)."""
    if not source.is_local:
        return None
    try:
        from datasets import load_dataset_builder

        files = load_dataset_builder(source.dataset, source.subset).config.data_files.get(source.split, [])
    except Exception:  # noqa: BLE001 - reading through `datasets` reports it with the recipe key
        return None
    files = [str(f) for f in files]
    return files if files and all(f.endswith(".parquet") for f in files) else None


def _parquet_rows(files: list[str]) -> Iterator[dict]:
    for file in files:
        yield from (row for _, row in file_rows(Path(file)))


def count_rows(source: DatasetSource) -> int | None:
    """Rows of a local folder's split from its Parquet metadata (cheap), capped by max_rows; None when unknown."""
    files = _parquet_files(source)
    if not files:
        return source.max_rows or None
    try:
        import pyarrow.parquet as pq

        rows = sum(pq.ParquetFile(file).metadata.num_rows for file in files)
    except Exception:  # noqa: BLE001 - plan shows "unknown" rather than failing on a layout it cannot read
        return source.max_rows or None
    return min(rows, source.max_rows) if source.max_rows else rows
