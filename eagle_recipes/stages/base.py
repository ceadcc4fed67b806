"""The small interface every stage implements."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ClassVar

from eagle_recipes.recipe import Recipe
from eagle_recipes.run_folder import RunFolder

# progress(done, total, unit): how far the stage is; total may be None when unknown
ProgressFn = Callable[[int, "int | None", str], None]


@dataclass
class StageContext:
    recipe: Recipe
    out: Path  # this stage's folder: <output_dir>/<stage>
    upstream: dict[str, Path]  # upstream stage name -> its folder
    progress: ProgressFn = field(default=lambda done, total, unit: None)
    log: Callable[[str], None] = field(default=print)

    @property
    def run(self) -> RunFolder:
        """The whole run's folder: where this stage's own outputs and every other stage's live."""
        return RunFolder(self.out.parent)


class Stage:
    """A stage reads artifacts and writes artifacts under `<output_dir>/<name>/`."""

    name: ClassVar[str]
    description: ClassVar[str]
    headline_metric: ClassVar[str] = ""  # the manifest metric the run table shows
    reads_from: ClassVar[tuple[str, ...]] = ()  # the stages whose outputs this one reads when the graph holds them

    @staticmethod
    def enabled(recipe: Recipe) -> tuple[bool, str]:
        """(runs?, why not) - a stage is left out when the recipe turns it off or supplies its output."""
        return True, ""

    @classmethod
    def depends_on(cls, recipe: Recipe, enabled: set[str]) -> list[str]:
        """This run's upstream stages: those it reads from that the recipe enables (in `reads_from`'s order)."""
        return [name for name in cls.reads_from if name in enabled]

    @staticmethod
    def settings(recipe: Recipe) -> dict[str, Any]:
        """The recipe fields that decide this stage's output (they go into its fingerprint)."""
        return {}

    @staticmethod
    def input_files(recipe: Recipe) -> list[Path]:
        """Files outside the run directory (named by the recipe) whose content decides this stage's output."""
        return []

    @staticmethod
    def outputs(recipe: Recipe) -> list[str]:
        return []

    @staticmethod
    def ray_options(recipe: Recipe) -> dict[str, Any]:
        """Ray options of the stage's own task (its workers, engines and actors ask for their own)."""
        return {"num_cpus": 0.1}

    @staticmethod
    def describe_resources(recipe: Recipe) -> list[str]:
        """What the stage's work asks Ray for beyond its own task, in words (shown by `plan`)."""
        return []

    @classmethod
    def headline(cls, manifest: dict[str, Any]) -> str:
        """One short figure for the run table: the headline metric, else the first counts."""
        value = manifest.get("metrics", {}).get(cls.headline_metric)
        if value is not None:
            shown = f"{value:.3g}" if isinstance(value, float) else value
            return f"{cls.headline_metric}={shown}"
        return ", ".join(f"{k}={v}" for k, v in list(manifest.get("counts", {}).items())[:2])

    @staticmethod
    def outcome(recipe: Recipe, manifest: dict[str, Any]) -> list[str]:
        """Lines printed when a run ends with this stage done or up to date."""
        return []

    @staticmethod
    def run(ctx: StageContext) -> dict[str, Any]:
        """Do the work; return {"counts": {...}, "metrics": {...}} for the manifest."""
        raise NotImplementedError
