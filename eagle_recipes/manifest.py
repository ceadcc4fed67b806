"""The small `stage.json` each stage leaves beside its artifacts, written last and atomically: its presence with
the right fingerprint is what "this stage is done" means."""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from eagle_recipes.atomic import remove_stale_temporaries, write_json

MANIFEST = "stage.json"
IN_PROGRESS = ".in-progress"  # holds the fingerprint of the run that is filling the folder


@dataclass
class Manifest:
    stage: str
    fingerprint: str
    started_at: float
    finished_at: float
    wall_s: float
    counts: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    outputs: list[str] = field(default_factory=list)
    peak_rss_mib: float | None = None  # the stage task's own peak memory (peak_memory.py); None: not measured


def read_manifest(folder: Path) -> Manifest | None:
    try:
        with open(folder / MANIFEST, encoding="utf-8") as handle:
            return Manifest(**json.load(handle))
    except (OSError, ValueError, TypeError):
        return None


def write_manifest(folder: Path, manifest: Manifest) -> None:
    write_json(folder / MANIFEST, asdict(manifest))
    (folder / IN_PROGRESS).unlink(missing_ok=True)


def prepare_folder(folder: Path, fingerprint: str) -> bool:
    """Make `folder` ready for a run with `fingerprint`; return True when it resumes earlier partial work.

    Partial work made under another fingerprint (other settings or inputs) is wiped: it would be stale.
    """
    folder.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(folder)
    marker = folder / IN_PROGRESS
    previous = marker.read_text().strip() if marker.exists() else None
    if previous == fingerprint:
        marker.touch()  # its time says when the stage last started
        return True
    for child in folder.iterdir():
        shutil.rmtree(child) if child.is_dir() else child.unlink()
    marker.write_text(fingerprint)
    return False
