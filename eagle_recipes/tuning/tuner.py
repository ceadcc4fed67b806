"""`eagle-recipes tune RECIPE`: choose the draft's levers by measurement on the user's own data.

The graph runs up to the features (synthesize, calibrate, capture: finished stages reused), then Ray Tune runs one
trial per combination of the `[tune]` table's space (tuning/trial.py), each training on those features and scored by
simulated tau on the held-out split; ASHA ends the weak trials early. tuning/results.py writes what they found under
`<output_dir>/tune/`: the table, the plot and `best.toml`.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Callable

from ray.tune import Callback
from ray.tune.schedulers import ASHAScheduler

from eagle_recipes.recipe import Recipe
from eagle_recipes.recipe.tune_space import expand, override_text, written_settings
from eagle_recipes.run_folder import TRAIN, TUNE_DATA, TUNE_RAY, RunFolder
from eagle_recipes.tuning.trial import Budget, TrialRecord


@dataclass(frozen=True)
class Trial:
    index: int
    settings: dict[str, Any]  # recipe key -> value, every key of the space
    overrides: tuple[str, ...]  # the same as key=value overrides
    folder: Path  # its record, named by what it trains (the train stage's fingerprint) and the budget
    config: dict[str, Any]  # the TrainConfig its worker runs
    seed_repeat: bool = False  # the recipe as written again, another seed: the spread a margin must beat

    @property
    def as_written(self) -> bool:
        return self.index == 0

    @property
    def label(self) -> str:
        return f"trial {self.index}" + (" (as written)" if self.as_written else
                                        " (as written, another seed)" if self.seed_repeat else "")

    def payload(self, budget: Budget) -> dict[str, Any]:
        return {"folder": str(self.folder), "settings": self.settings, "config": self.config, "budget": asdict(budget),
                "baseline": self.as_written or self.seed_repeat}


def tune_folder(recipe: Recipe) -> Path:
    return RunFolder(Path(recipe.output_dir)).tune


def budget_of(recipe: Recipe) -> Budget:
    tune = recipe.tune
    reports = min(tune.reports, tune.trial_steps) if tune.trial_steps else tune.reports
    return Budget(minutes=float(tune.trial_minutes), steps=int(tune.trial_steps), reports=int(reports))


def run_features(recipe: Recipe, address: str | None, verbose: bool) -> dict[str, Path]:
    """Run the graph up to what training reads (reusing finished stages); that upstream, by stage name."""
    from eagle_recipes.graph.plan import compile_plan
    from eagle_recipes.graph.runner import run_plan

    full = compile_plan(recipe)
    needs = full.stage(TRAIN).depends_on
    plan = compile_plan(recipe, until=needs[-1]) if needs else None
    if plan is not None:
        run_plan(recipe, plan, address=address, verbose=verbose)
    return {name: RunFolder(Path(recipe.output_dir)).stage(name) for name in needs}


def build_trials(recipe: Recipe, upstream: dict[str, Path], log: Callable[[str], None]) -> list[Trial]:
    """One Trial per combination of the space, the recipe as written first (and last, with another seed, unless
    not `seed_repeat`), each checked as a whole recipe."""
    from eagle_recipes.draft.drafters import DEFAULTS
    from eagle_recipes.graph.plan import compile_plan
    from eagle_recipes.recipe.loader import load_recipe
    from eagle_recipes.stages.train import prepare_training

    space, folder, budget = dict(recipe.tune.space), tune_folder(recipe), budget_of(recipe)
    as_written = written_settings(space, recipe.data, DEFAULTS.get(recipe.draft.algorithm, {}))
    variants = [(settings, ()) for settings in expand(space, as_written, recipe.tune.trials)]
    if recipe.tune.seed_repeat and "train.seed" not in space:
        variants.append((as_written, (f"train.seed={recipe.train.seed + 1}",)))
    trials = []
    for index, (settings, extra) in enumerate(variants):
        overrides = (*(override_text(key, value) for key, value in settings.items()), *extra)
        variant = load_recipe(recipe.path, overrides=[*recipe.overrides, *overrides], check_space=False)
        variant = replace(variant, data={**variant.data, "output_dir": str(recipe.output_dir)})  # --output-dir too
        trained = compile_plan(variant).stage(TRAIN).fingerprint
        key = hashlib.sha256(json.dumps([trained, asdict(budget), recipe.tune.conversations]).encode()).hexdigest()[:12]
        record = RunFolder(Path(recipe.output_dir)).trial(f"{index:02d}-{key}")
        prepared = prepare_training(variant, upstream, folder / TUNE_DATA, *RunFolder.trial_training_files(record),
                                    simulate=True, log=log)
        if not prepared.config.holdout_folder:
            raise ValueError("a tune scores trials on the held-out split, which is empty: set data.holdout_fraction "
                             "(e.g. 0.05)")
        config = replace(prepared.config, simulate_every=1, keep_best=False, max_sequences=recipe.tune.conversations)
        trials.append(Trial(index, settings, overrides, record, config.to_dict(), seed_repeat=bool(extra)))
    return trials


def trial_resources(recipe: Recipe) -> dict[str, float]:
    train = recipe.train
    return {"CPU": 1, "GPU": 1} if train.use_gpu else {"CPU": train.cpus_per_worker}


def concurrent_trials(recipe: Recipe, address: str | None) -> int | None:
    """Trials at a time: the recipe's, else one per GPU (Ray's resources decide) or, on CPUs, as many as the real
    cores hold (an embedded Ray declares more CPUs than there are cores; a cluster's are real)."""
    if recipe.tune.concurrent:
        return recipe.tune.concurrent
    if recipe.train.use_gpu or address or recipe.ray.address:
        return None
    return max(1, (os.cpu_count() or 1) // max(1, int(recipe.train.cpus_per_worker)))


class BaselinesRunWhole(ASHAScheduler):
    """ASHA, except that the recipe as written and its seed repeat always use the whole budget: the winner's margin
    and the seed-to-seed spread are read against them at the same report."""

    def on_trial_result(self, tune_controller, trial, result):
        action = super().on_trial_result(tune_controller, trial, result)
        whole = result.get(self._time_attr, 0) >= self._max_t
        if action == self.STOP and trial.config["trial"].get("baseline") and not whole:
            self._num_stopped -= 1
            return self.CONTINUE
        return action


class TrialEvents(Callback):
    """Ray Tune's callbacks, on the driver: mark a trial's record done when Tune ends it, and show progress."""

    def __init__(self, trials: list[Trial], reports: int, show: Callable[[Trial, str, dict | None], None]):
        self.by_folder = {str(trial.folder): trial for trial in trials}
        self.reports, self.show = reports, show

    def __getstate__(self) -> dict:
        # Tune pickles its run config for Tuner.restore, which a tune does not use (its records resume it); the
        # display holds locks
        return {}

    def on_trial_result(self, iteration, trials, trial, result, **info):
        self.show(self.trial_of(trial), "result", result)

    def on_trial_complete(self, iteration, trials, trial, **info):
        ours = self.trial_of(trial)
        record = TrialRecord(ours.folder)
        if record.done() is None:
            record.mark_done("finished" if len(record.reports()) >= self.reports else "stopped")
        self.show(ours, record.done()["status"], None)

    def on_trial_error(self, iteration, trials, trial, **info):
        self.show(self.trial_of(trial), "error", None)

    def trial_of(self, tune_trial) -> Trial:
        return self.by_folder[tune_trial.config["trial"]["folder"]]


def run_trials(recipe: Recipe, trials: list[Trial], show: Callable[[Trial, str, dict | None], None],
               concurrent: int | None = 1, verbose: bool = False) -> None:
    """Every trial through Ray Tune with ASHA (a fresh experiment each time: the records are what resume)."""
    from ray import tune

    if not verbose:  # Tune's own reporter prints its experiment box whatever the verbosity; the display says it all
        os.environ["RAY_AIR_NEW_OUTPUT"] = "0"

    settings, budget = recipe.tune, budget_of(recipe)
    storage = tune_folder(recipe) / TUNE_RAY
    shutil.rmtree(storage, ignore_errors=True)
    scheduler = BaselinesRunWhole(max_t=budget.reports, grace_period=min(settings.grace_reports, budget.reports),
                              reduction_factor=settings.reduction_factor)
    tuner = tune.Tuner(
        tune.with_resources(_trainable(), trial_resources(recipe)),
        param_space={"trial": tune.grid_search([trial.payload(budget) for trial in trials])},
        tune_config=tune.TuneConfig(metric="simulated_tau", mode="max", scheduler=scheduler,
                                    max_concurrent_trials=concurrent),
        run_config=tune.RunConfig(storage_path=str(storage), name="trials", verbose=0,
                                  callbacks=[TrialEvents(trials, budget.reports, show)]))
    grid = tuner.fit()
    failed = [result.error for result in grid if result.error is not None]
    if failed:
        raise RuntimeError(f"{len(failed)} trial(s) failed; the first: {failed[0]}")


def _trainable():
    from eagle_recipes.tuning.trial import run_trial

    return run_trial


@dataclass
class TuneOutcome:
    results: list  # TrialResult, by trial index
    winner: Any  # TrialResult
    margin: float  # winner's simulated tau - the recipe as written's, at `margin_report`
    margin_report: int
    spread: float | None  # |as written - as written with another seed| at the same report (None: not measured)
    best_recipe: Path
    table: Path
    plot: Path
    notes: list[str]  # what best.toml changes
    hardware: str


class Silent:
    """What `tune` tells a display: how many trials there are, and each trial's results and end."""

    def trials(self, count: int) -> None:
        pass

    def show(self, trial: Trial, event: str, result: dict | None) -> None:
        pass


def tune(recipe: Recipe, address: str | None = None, verbose: bool = False, display: Any = Silent(),
         log: Callable[[str], None] = print) -> TuneOutcome:
    """The whole tune: features, trials (finished ones replayed), then the table, the plot and best.toml."""
    from eagle_recipes.graph.runner import init_ray
    from eagle_recipes.recipe.loader import load_recipe
    from eagle_recipes.tuning.results import (TABLE, best_table, collect, margin, plot, seed_spread, winner_of,
                                              write_best, write_table)

    upstream = run_features(recipe, address, verbose)
    init_ray(recipe, address, verbose)
    folder = tune_folder(recipe)
    folder.mkdir(parents=True, exist_ok=True)
    trials = build_trials(recipe, upstream, log)
    display.trials(len(trials))
    finished = sum(TrialRecord(trial.folder).done() is not None for trial in trials)
    if finished:
        log(f"resuming: {finished} of {len(trials)} trials finished before; their reports are replayed, not retrained")
    run_trials(recipe, trials, display.show, concurrent_trials(recipe, address), verbose)
    results = collect(trials)
    winner, hardware = winner_of(results), trials_hardware(recipe)
    gain, report = margin(winner, results[0])
    spread = seed_spread(results, report)
    write_table(folder, results, winner, hardware)
    figure = plot(folder, results, winner, hardware)
    table, notes = best_table(recipe, winner, results[0], budget_in_minutes=not recipe.tune.trial_steps)
    spread_text = f", seed-to-seed spread {spread:.3f}" if spread is not None else ""
    best = write_best(folder, recipe, table, notes, f"simulated tau {winner.score:.3f}, {gain:+.3f} over the recipe as "
                                                    f"written at report {report}{spread_text}, on {hardware}")
    load_recipe(best)  # what `run` will be given must be a valid recipe
    return TuneOutcome(results, winner, gain, report, spread, best, folder / TABLE, figure, notes, hardware)


def trials_hardware(recipe: Recipe) -> str:
    if recipe.train.use_gpu:
        return "GPU workers"
    import torch

    from eagle_recipes.devices import describe_hardware

    return f"{describe_hardware(torch.device('cpu'))}, {recipe.train.cpus_per_worker} CPU a trial"
