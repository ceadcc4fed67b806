"""Serving speed: tokens/s of the base model alone (k = 0) and with the draft at each k, at each load (requests
served at once), measured with the same engine settings on the same prompts; tau and per-position acceptance of
each run from vLLM's counters. The recommendation per load is the fastest measured row, which may be the base
alone: on some hardware no k pays for its draft passes, and the report says so and by how much.

Each row: {"k", "concurrency", "tokens_per_s", "speedup", "acceptance_length", "per_position"} (k = 0 is the base
alone: speedup 1, tau 1).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass(frozen=True)
class SpeedSettings:
    concurrency: tuple[int, ...]  # the loads: requests served at once
    prompts: int  # MT-bench questions, spread over its categories
    max_tokens: int
    min_prompts: int = 4  # at load c, max(c, min_prompts) prompts, in groups of c

    def prompts_at(self, load: int) -> int:
        return min(self.prompts, max(load, self.min_prompts))


@dataclass
class SpeedRow:
    k: int
    concurrency: int
    tokens_per_s: float
    speedup: float = 1.0  # against the base alone at the same load
    acceptance_length: float = 1.0
    per_position: list[float] = field(default_factory=list)
    prompts: int = 0
    tokens: int = 0


@dataclass
class SpeedTable:
    rows: list[SpeedRow]
    settings: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        base = {r.concurrency: r.tokens_per_s for r in self.rows if r.k == 0}
        for row in self.rows:
            if row.concurrency in base and base[row.concurrency]:
                row.speedup = row.tokens_per_s / base[row.concurrency]

    @property
    def loads(self) -> list[int]:
        return sorted({r.concurrency for r in self.rows})

    def at(self, load: int) -> list[SpeedRow]:
        return sorted((r for r in self.rows if r.concurrency == load), key=lambda r: r.k)

    def recommended(self, load: int) -> SpeedRow:
        """The fastest measured configuration at this load (the base alone when no k beats it)."""
        return max(self.at(load), key=lambda r: r.tokens_per_s)

    def best_draft(self, load: int) -> SpeedRow | None:
        """The fastest k >= 1 at this load."""
        drafted = [r for r in self.at(load) if r.k > 0]
        return max(drafted, key=lambda r: r.tokens_per_s) if drafted else None

    def advice(self, load: int) -> str:
        """One sentence: which k to serve with at this load, or that none pays here."""
        best, drafted = self.recommended(load), self.best_draft(load)
        if best.k > 0:
            return (f"load {load}: serve with k = {best.k}: {best.tokens_per_s:.1f} tokens/s, {best.speedup:.2f}x the "
                    f"base alone (tau {best.acceptance_length:.2f})")
        if drafted is None:
            return f"load {load}: only the base alone was measured"
        return (f"load {load}: no k beats the base alone on this hardware; the best, k = {drafted.k}, runs at "
                f"{drafted.speedup:.2f}x ({drafted.tokens_per_s:.1f} against {best.tokens_per_s:.1f} tokens/s)")

    def headline(self) -> str:
        """The best measured configuration over every load, for a run's closing lines."""
        top = max((self.recommended(load) for load in self.loads), key=lambda r: r.speedup)
        if top.k == 0:
            return "no k beats the base alone at any measured load: " + "; ".join(self.advice(l) for l in self.loads)
        return (f"fastest: k = {top.k} at load {top.concurrency}, {top.speedup:.2f}x the base alone; "
                + "; ".join(self.advice(l) for l in self.loads if l != top.concurrency))

    def to_dict(self) -> dict[str, Any]:
        return {"rows": [asdict(r) for r in self.rows], "settings": self.settings,
                "recommended": {str(load): asdict(self.recommended(load)) for load in self.loads},
                "advice": [self.advice(load) for load in self.loads]}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "SpeedTable":
        return cls([SpeedRow(**row) for row in data["rows"]], data.get("settings", {}))

    def markdown(self) -> list[str]:
        """The table a card shows: per k and load, tokens/s, speedup and tau."""
        loads = self.loads
        lines = ["| k | " + " | ".join(f"load {load}: tokens/s, speedup, tau" for load in loads) + " |",
                 "|---|" + "---|" * len(loads)]
        for k in sorted({r.k for r in self.rows}):
            cells = []
            for load in loads:
                row = next((r for r in self.at(load) if r.k == k), None)
                cells.append("-" if row is None else
                             f"{row.tokens_per_s:.1f}, {row.speedup:.2f}x, {row.acceptance_length:.2f}")
            lines.append(f"| {'base alone' if k == 0 else k} | " + " | ".join(cells) + " |")
        return lines


def plot_speed(axis, table: SpeedTable) -> None:
    """Speedup against k, one line per load (the base alone at k = 0)."""
    for load in table.loads:
        rows = table.at(load)
        axis.plot([r.k for r in rows], [r.speedup for r in rows], "-o", label=f"load {load}")
    axis.axhline(1.0, color="grey", linewidth=0.8)
    axis.set_xlabel("draft tokens k (0: base alone)")
    axis.set_ylabel("tokens/s against the base alone")
    axis.set_title("serving speed")
    axis.legend()
