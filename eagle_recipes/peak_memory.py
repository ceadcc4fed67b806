"""A process's peak memory as the kernel counts it (VmHWM), reset when a stage's task starts: a Ray worker process
runs task after task, and a task shorter than any sampling interval still has its exact peak."""

from __future__ import annotations

import re
from pathlib import Path

STATUS, CLEAR_REFS = Path("/proc/self/status"), Path("/proc/self/clear_refs")


def reset_peak() -> bool:
    """Start counting this process's peak again from its present size (Linux: "5" to clear_refs); False where the
    kernel offers no such reset (the peak then covers the process's whole life)."""
    try:
        CLEAR_REFS.write_text("5")
        return True
    except OSError:
        return False


def peak_mib() -> float | None:
    """This process's peak resident memory in MiB since it started or was last reset (None off Linux)."""
    try:
        found = re.search(r"^VmHWM:\s+(\d+) kB", STATUS.read_text(), re.MULTILINE)
    except OSError:
        return None
    return round(int(found.group(1)) / 1024, 1) if found else None
