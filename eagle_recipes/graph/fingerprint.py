"""Fingerprints: a stage is up to date when the hash of its settings, its input files and its upstream
stages' fingerprints equals the one in its manifest."""

from __future__ import annotations

import hashlib
import json
import os
from functools import lru_cache
from pathlib import Path
from typing import Any

from eagle_recipes import __version__


@lru_cache(maxsize=256)
def _file_digest(path: str, size: int, mtime_ns: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def file_digest(path: str | os.PathLike) -> str:
    """Content hash of a file (or of every file in a folder), cached on size and mtime."""
    path = Path(path)
    if path.is_dir():
        parts = [f"{p.relative_to(path)}:{file_digest(p)}" for p in sorted(path.rglob("*")) if p.is_file()]
        return hashlib.sha256("\n".join(parts).encode()).hexdigest()
    stat = path.stat()
    return _file_digest(str(path), stat.st_size, stat.st_mtime_ns)


def fingerprint(settings: Any, files: list[Path], upstream: dict[str, str]) -> str:
    """Short hash over everything that decides a stage's output."""
    payload = {
        "version": __version__,
        "settings": settings,
        "files": sorted(file_digest(f) for f in files),  # content only: moving a project keeps its cache
        "upstream": upstream,
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:16]
