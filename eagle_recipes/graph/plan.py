"""Compile a Recipe into a Plan: the enabled stages in order, their inputs, outputs, resources, fingerprints,
and whether each is up to date or must run (and why). Compiling runs nothing heavy."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from eagle_recipes.graph.fingerprint import fingerprint
from eagle_recipes.manifest import read_manifest
from eagle_recipes.recipe import Recipe
from eagle_recipes.run_folder import RunFolder
from eagle_recipes.stages import STAGES
from eagle_recipes.stages.base import Stage


@dataclass
class PlannedStage:
    name: str
    description: str
    depends_on: list[str]
    input_files: list[str]  # files outside the run directory
    outputs: list[str]
    ray_options: dict[str, Any]  # the stage's own Ray task
    resources: list[str]  # what its work asks for beyond that, in words
    fingerprint: str
    status: str  # "up to date" | "run" | "skipped"
    reason: str

    @property
    def must_run(self) -> bool:
        return self.status == "run"


@dataclass
class Plan:
    recipe: str
    output_dir: str
    stages: list[PlannedStage] = field(default_factory=list)
    left_out: dict[str, str] = field(default_factory=dict)  # stage -> why it is not in the graph

    def stage(self, name: str) -> PlannedStage:
        return next(s for s in self.stages if s.name == name)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _stage_classes(recipe: Recipe) -> tuple[list[type[Stage]], dict[str, str]]:
    enabled, left_out = [], {}
    for stage in STAGES:
        runs, why = stage.enabled(recipe)
        if runs:
            enabled.append(stage)
        else:
            left_out[stage.name] = why
    return enabled, left_out


def compile_plan(recipe: Recipe, force: set[str] = frozenset(), only: str | None = None,
                 start_from: str | None = None, until: str | None = None) -> Plan:
    """Order the stages, fingerprint them, and decide for each whether it must run.

    force: stages to run even when up to date; start_from: run this stage and all after it;
    only: run just this stage (its upstream must be up to date); until: no stage after this one.
    """
    stages, left_out = _stage_classes(recipe)
    names = {stage.name for stage in stages}
    for requested in [*force, only, start_from, until]:
        if requested and requested not in names:
            known = ", ".join(s.name for s in stages)
            raise ValueError(f"stage '{requested}' is not in this recipe's graph (stages: {known})"
                             + (f"; it is left out: {left_out[requested]}" if requested in left_out else ""))
    plan = Plan(recipe=str(recipe.path), output_dir=str(recipe.output_dir), left_out=left_out)
    fingerprints: dict[str, str] = {}
    must_run: set[str] = set()
    order = [s.name for s in stages]
    for stage in stages:
        deps = stage.depends_on(recipe, names)
        files = stage.input_files(recipe)
        fp = fingerprint(stage.settings(recipe), files, {d: fingerprints[d] for d in deps})
        fingerprints[stage.name] = fp
        manifest = read_manifest(RunFolder(Path(recipe.output_dir)).stage(stage.name))
        stale_deps = [d for d in deps if d in must_run]
        if until and order.index(stage.name) > order.index(until):
            status, reason = "skipped", f"after {until}"
        elif stage.name in force:
            status, reason = "run", "forced"
        elif only and stage.name != only:
            status, reason = ("up to date", "") if manifest and manifest.fingerprint == fp else ("skipped", "--only")
        elif start_from and order.index(stage.name) >= order.index(start_from):
            status, reason = "run", f"--from {start_from}"
        elif manifest is None:
            status, reason = "run", "no finished output yet"
        elif manifest.fingerprint != fp:
            status, reason = "run", ("upstream changed: " + ", ".join(stale_deps)) if stale_deps \
                else "settings or input files changed"
        elif stale_deps:
            status, reason = "run", "upstream will re-run: " + ", ".join(stale_deps)
        else:
            status, reason = "up to date", f"finished in {manifest.wall_s:.1f}s"
        if only and stage.name == only and status == "up to date" and stage.name not in force:
            status, reason = "run", "--only"
        if status == "run":
            must_run.add(stage.name)
        plan.stages.append(PlannedStage(
            name=stage.name, description=stage.description, depends_on=deps, input_files=[str(f) for f in files],
            outputs=stage.outputs(recipe), ray_options=stage.ray_options(recipe),
            resources=stage.describe_resources(recipe), fingerprint=fp,
            status=status, reason=reason))
    return plan

