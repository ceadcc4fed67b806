"""Serving speed: tokens/s of the base model alone (k = 0) and with the draft at each k, at each load (requests
served at once), measured with the same engine settings on the same prompts; tau and per-position acceptance of
each run from vLLM's counters. The recommendation per load is the fastest measured row, which may be the base
alone: on some hardware no k pays for its draft passes, and the report says so and by how much.

Each row: {"k", "concurrency", "tokens_per_s", "speedup", "acceptance_length", "per_position", "samples",
"spread"} (k = 0 is the base alone: speedup 1, tau 1). Every load is measured `repeats` times in a row on each
engine: tokens_per_s is the median of the samples, spread their range over the median. Two configurations whose
medians differ by less than their spread are reported as a tie, not as a winner.
"""

from __future__ import annotations

import statistics
from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass(frozen=True)
class SpeedSettings:
    concurrency: tuple[int, ...]  # the loads: requests served at once
    prompts: int  # MT-bench questions, spread over its categories
    max_tokens: int
    min_prompts: int = 4  # at load c, max(c, min_prompts) prompts, in groups of c
    repeats: int = 3  # measurements of each load on each engine, back to back
    draft_tokens: tuple[int, ...] = ()  # the k values measured (empty: 1..K)

    def ks(self, k: int) -> list[int]:
        """The k values the sweep measures, at most K (the tau runs' engine is K's, measured or not)."""
        return sorted({d for d in self.draft_tokens if d <= k}) if self.draft_tokens else list(range(1, k + 1))

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
    samples: list[float] = field(default_factory=list)  # tokens/s of each repeat
    spread: float = 0.0  # (max - min) / median of the samples

    @classmethod
    def from_samples(cls, k: int, concurrency: int, samples: list[float], **extra: Any) -> "SpeedRow":
        median = statistics.median(samples)
        spread = (max(samples) - min(samples)) / median if median else 0.0
        return cls(k, concurrency, median, samples=[round(v, 2) for v in samples], spread=round(spread, 4), **extra)


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

    def runner_up(self, load: int) -> SpeedRow | None:
        """The second-fastest configuration at this load (the base alone included)."""
        rows = sorted(self.at(load), key=lambda r: r.tokens_per_s, reverse=True)
        return rows[1] if len(rows) > 1 else None

    def within_noise(self, load: int) -> bool:
        """Whether the fastest configuration leads the next by less than the spread of their repeats."""
        best, second = self.recommended(load), self.runner_up(load)
        if second is None or not second.tokens_per_s:
            return False
        return best.tokens_per_s / second.tokens_per_s - 1 <= max(best.spread, second.spread)

    def advice(self, load: int) -> str:
        """One sentence: which k to serve with at this load, or that none pays here, and whether the lead is
        larger than the measurement's own spread."""
        best, drafted, second = self.recommended(load), self.best_draft(load), self.runner_up(load)
        noise = ""
        if self.within_noise(load):
            spread = (f"the measurement's spread ({100 * max(best.spread, second.spread):.0f}% over "
                      f"{len(best.samples)} repeats)")
            if best.k == 0:
                noise = f"; that lead is within {spread}: too close to call"
            else:
                rival = "the base alone" if second.k == 0 else f"k = {second.k}"
                noise = f"; {rival} ({second.speedup:.2f}x) is within {spread}: too close to call"
        if best.k > 0:
            return (f"load {load}: serve with k = {best.k}: {best.tokens_per_s:.1f} tokens/s, {best.speedup:.2f}x the "
                    f"base alone (tau {best.acceptance_length:.2f}){noise}")
        if drafted is None:
            return f"load {load}: only the base alone was measured"
        return (f"load {load}: no k beats the base alone on this hardware; the best, k = {drafted.k}, runs at "
                f"{drafted.speedup:.2f}x ({drafted.tokens_per_s:.1f} against {best.tokens_per_s:.1f} tokens/s){noise}")

    def headline(self) -> str:
        """The best measured configuration over every load, for a run's closing lines."""
        top = max((self.recommended(load) for load in self.loads), key=lambda r: r.speedup)
        if top.k == 0:
            return "no k beats the base alone at any measured load: " + "; ".join(self.advice(l) for l in self.loads)
        on = f"{self.settings['hardware']}, " if self.settings.get("hardware") else ""
        tie = ", within noise of the next" if self.within_noise(top.concurrency) else ""
        spread = f" ({on}spread {100 * top.spread:.0f}%{tie})"
        others = [self.advice(load) for load in self.loads if load != top.concurrency]
        return "; ".join([f"fastest: k = {top.k} at load {top.concurrency}, {top.speedup:.2f}x the base alone{spread}",
                          *others])

    def to_dict(self) -> dict[str, Any]:
        return {"rows": [asdict(r) for r in self.rows], "settings": self.settings,
                "recommended": {str(load): asdict(self.recommended(load)) for load in self.loads},
                "advice": [self.advice(load) for load in self.loads]}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "SpeedTable":
        return cls([SpeedRow(**row) for row in data["rows"]], data.get("settings", {}))

    def markdown(self) -> list[str]:
        """The table a card shows: per k and load, tokens/s (± half the repeats' range), speedup and tau."""
        loads = self.loads
        lines = ["| k | " + " | ".join(f"load {load}: tokens/s, speedup, tau" for load in loads) + " |",
                 "|---|" + "---|" * len(loads)]
        for k in sorted({r.k for r in self.rows}):
            cells = []
            for load in loads:
                row = next((r for r in self.at(load) if r.k == k), None)
                spread = f" ±{50 * row.spread:.0f}%" if row and row.samples and len(row.samples) > 1 else ""
                cells.append("-" if row is None else
                             f"{row.tokens_per_s:.1f}{spread}, {row.speedup:.2f}x, {row.acceptance_length:.2f}")
            lines.append(f"| {'base alone' if k == 0 else k} | " + " | ".join(cells) + " |")
        return lines


def plot_speed(axis, table: SpeedTable) -> None:
    """Speedup against k, one line per load (the base alone at k = 0)."""
    for load in table.loads:
        rows = table.at(load)
        axis.errorbar([r.k for r in rows], [r.speedup for r in rows], yerr=[r.speedup * r.spread / 2 for r in rows],
                      fmt="-o", capsize=3, label=f"load {load}")
    axis.axhline(1.0, color="grey", linewidth=0.8)
    axis.set_xlabel("draft tokens k (0: base alone)")
    axis.set_ylabel("tokens/s against the base alone")
    axis.set_title(f"serving speed ({table.settings['hardware']})" if table.settings.get("hardware")
                   else "serving speed")
    axis.legend()
