"""Progress: stages report to a small Ray actor; the driver shows a rich live view on a terminal and plain
log lines otherwise, then a summary table."""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from typing import Any

import ray
from rich.console import Console
from rich.live import Live
from rich.table import Table


@ray.remote(num_cpus=0)
class ProgressHub:
    """Collects progress and log lines from stage tasks (wherever on the cluster they run)."""

    def __init__(self) -> None:
        self.state: dict[str, tuple[int, int | None, str, float]] = {}
        self.lines: list[tuple[str, str]] = []

    def update(self, stage: str, done: int, total: int | None, unit: str) -> None:
        self.state[stage] = (done, total, unit, time.time())

    def log(self, stage: str, message: str) -> None:
        self.lines.append((stage, message))

    def drain(self) -> tuple[dict, list]:
        lines, self.lines = self.lines, []
        return dict(self.state), lines


@dataclass
class StageView:
    name: str
    status: str = "waiting"  # waiting | running | done | failed | up to date | skipped
    started: float | None = None
    wall_s: float = 0.0
    done: int = 0
    total: int | None = None
    unit: str = ""
    first_progress: tuple[float, int] | None = None
    metric: str = ""

    def rate(self) -> float | None:
        if not self.first_progress or self.done <= self.first_progress[1]:
            return None
        elapsed = time.time() - self.first_progress[0]
        return (self.done - self.first_progress[1]) / elapsed if elapsed > 0 else None


@dataclass
class Display:
    """Live view of the graph; `interactive` follows whether stdout is a terminal."""

    stages: list[str]
    console: Console = field(default_factory=lambda: Console(stderr=False))
    interactive: bool = field(default_factory=lambda: sys.stdout.isatty())
    views: dict[str, StageView] = field(default_factory=dict)
    _live: Live | None = None
    _last_plain: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.views = {name: StageView(name) for name in self.stages}

    def __enter__(self) -> "Display":
        if self.interactive:
            self._live = Live(self._table(), console=self.console, refresh_per_second=4, transient=False)
            self._live.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._live:
            self._live.update(self._table())
            self._live.__exit__(*exc)

    def say(self, message: str) -> None:
        if self._live:
            self._live.console.print(message)
        else:
            print(message, flush=True)

    def set_status(self, stage: str, status: str, metric: str = "", wall_s: float | None = None) -> None:
        view = self.views[stage]
        view.status = status
        if status == "running" and view.started is None:
            view.started = time.time()
        if wall_s is not None:
            view.wall_s = wall_s
        elif status == "failed" and view.started is not None:  # how long it ran before it failed
            view.wall_s = time.time() - view.started
        if metric:
            view.metric = metric
        if not self._live:
            extra = f" ({metric})" if metric else ""
            timing = f" in {view.wall_s:.1f}s" if status in ("done", "failed") else ""
            print(f"[{stage}] {status}{timing}{extra}", flush=True)
        self.refresh()

    def progress(self, stage: str, done: int, total: int | None, unit: str) -> None:
        view = self.views[stage]
        if view.status != "running" or (done, total) == (view.done, view.total):
            return
        if view.first_progress is None:
            view.first_progress = (time.time(), done)
        phase_changed = unit != view.unit
        if phase_changed:  # a new unit is a new phase (evaluate: per prompt set and engine): its own rate
            view.first_progress = (time.time(), done)
        view.done, view.total, view.unit = done, total, unit
        now = time.time()
        text = self._progress_text(view)
        if not self._live and text and (phase_changed or now - self._last_plain.get(stage, 0) > 10):
            self._last_plain[stage] = now
            print(f"[{stage}] {text}", flush=True)
        self.refresh()

    def refresh(self) -> None:
        if self._live:
            self._live.update(self._table())

    @staticmethod
    def _progress_text(view: StageView) -> str:
        if view.total is None and not view.done:
            return ""
        text = f"{view.done}/{view.total} {view.unit}" if view.total else f"{view.done} {view.unit}"
        rate = view.rate()
        if rate:
            unit = view.unit.split(" (")[0]  # "prompts (mt-bench, with the draft)": the rate is in prompts
            text += f"  {rate:.1f} {unit}/s" if rate >= 1 else f"  {1 / rate:.1f} s/{unit.rstrip('s')}"
            if view.total and view.total > view.done:
                text += f"  ETA {(view.total - view.done) / rate:.0f}s"
        return text

    def _table(self) -> Table:
        table = Table(title="eagle-recipes", expand=False)
        for column in ("stage", "status", "progress", "wall", "result"):
            table.add_column(column)
        colors = {"done": "green", "up to date": "green", "running": "yellow", "failed": "red"}
        for view in self.views.values():
            wall = view.wall_s if view.status != "running" else time.time() - (view.started or time.time())
            bar = ""
            if view.total:
                filled = int(20 * min(view.done, view.total) / view.total)
                bar = "█" * filled + "░" * (20 - filled) + " "
            color = colors.get(view.status, "white")
            table.add_row(view.name, f"[{color}]{view.status}[/{color}]", bar + self._progress_text(view),
                          f"{wall:.1f}s" if wall else "", view.metric)
        return table

    def summary(self) -> Table:
        return self._table()
