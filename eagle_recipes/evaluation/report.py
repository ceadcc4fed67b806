"""The one report both measuring paths return: per prompt set, tau and per-position acceptance (greedy, k draft
tokens), the losslessness check and, from vLLM, tokens/s with and without the draft; plus report.json and the
per-position chart."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from eagle_recipes.atomic import atomic_path, write_json
from eagle_recipes.evaluation.speed import SpeedTable, plot_speed
from eagle_recipes.run_folder import REPORT_FILE, REPORT_PLOT

if TYPE_CHECKING:  # the reference decoder's module imports torch: not needed to read or write a report
    from eagle_recipes.draft.reference import Acceptance


@dataclass
class SetReport:
    prompts: int
    acceptance_length: float  # tau: tokens per verify step, the bonus token included
    per_position: list[float]
    drafts: int
    accepted: int
    identical: int  # speculative outputs equal to the target's own greedy outputs
    by_category: dict[str, dict[str, Any]] = field(default_factory=dict)
    tokens_per_s_target_alone: float | None = None  # vLLM path only
    tokens_per_s_with_draft: float | None = None

    @classmethod
    def from_acceptance(cls, prompts: int, total: Acceptance, identical: int, **extra: Any) -> "SetReport":
        return cls(prompts=prompts, acceptance_length=total.acceptance_length, per_position=total.per_position,
                   drafts=total.drafts, accepted=total.accepted, identical=identical, **extra)

    @property
    def lossless(self) -> bool:
        return self.identical == self.prompts

    @property
    def identical_outputs(self) -> str:
        return f"{self.identical}/{self.prompts}"

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "lossless": self.lossless, "identical_outputs": self.identical_outputs}

    def summary(self, name: str) -> str:
        # no speed figure here: these runs batch a category at a time, which is no load a server sees; the speed
        # sweep's advice is the one figure to act on
        return (f"{name}: tau {self.acceptance_length:.3f}, per position "
                f"{', '.join(f'{p:.2f}' for p in self.per_position)}, identical outputs {self.identical_outputs}")


@dataclass
class EvalReport:
    sets: dict[str, SetReport]
    settings: dict[str, Any]
    speed: SpeedTable | None = None  # the serving-speed sweep (vLLM path)

    @property
    def headline_set(self) -> str | None:
        return "mt-bench" if "mt-bench" in self.sets else next(iter(self.sets), None)

    @property
    def headline(self) -> SetReport | None:
        return self.sets.get(self.headline_set) if self.headline_set else None

    @property
    def lossless(self) -> bool:
        return all(entry.lossless for entry in self.sets.values())

    def to_dict(self) -> dict[str, Any]:
        headline = self.headline
        return {"settings": self.settings, "sets": {name: e.to_dict() for name, e in self.sets.items()},
                "headline_set": self.headline_set,
                "acceptance_length": headline.acceptance_length if headline else None,
                "per_position": headline.per_position if headline else None,
                "speed": self.speed.to_dict() if self.speed else None}

    def write(self, out: Path) -> None:
        """report.json and, when there is something to draw, per_position.png."""
        write_json(out / REPORT_FILE, self.to_dict())
        if self.sets:
            plot_per_position(self.sets, out / REPORT_PLOT, self.speed)


def plot_per_position(sets: dict[str, SetReport], path: Path, speed: SpeedTable | None = None) -> None:
    """Per-position acceptance per prompt set; beside it, with a speed sweep, speedup against k per load."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if speed:
        figure, (axis, speed_axis) = plt.subplots(1, 2, figsize=(12, 4))
        plot_speed(speed_axis, speed)
    else:
        figure, axis = plt.subplots(figsize=(7, 4))
    width = 0.8 / max(1, len(sets))
    for index, (name, entry) in enumerate(sets.items()):
        rates = entry.per_position
        axis.bar(np.arange(1, len(rates) + 1) + index * width, rates, width,
                 label=f"{name} (tau {entry.acceptance_length:.2f})")
    axis.set_xlabel("draft position")
    axis.set_ylabel("acceptance rate")
    axis.set_ylim(0, 1)
    axis.set_title("per-position acceptance (greedy)")
    axis.legend()
    figure.tight_layout()
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format="png", dpi=100)
    plt.close(figure)
