"""What a tune found, from its trials' records: the table (`trials.md`, `trials.jsonl`), the plot (`tune.png`,
simulated tau against training minutes) and `best.toml`, the recipe with the winning settings, which
`eagle-recipes run` takes as it is.

A trial's score is its simulated tau at its last report. The winner is the best score among the trials that used
the whole budget (ASHA stopped the others early, at a lower budget); its margin over the recipe as written is taken
at the same report, so that both had the same minutes.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from eagle_recipes.atomic import write_jsonl, write_text
from eagle_recipes.recipe import Recipe
from eagle_recipes.recipe.overrides import apply_overrides, parse_overrides
from eagle_recipes.recipe.schema import apply_defaults
from eagle_recipes.recipe.tune_space import toml_value
from eagle_recipes.run_folder import BEST_RECIPE, TUNE_PLOT as PLOT, TUNE_RESULTS as RESULTS, TUNE_TABLE as TABLE
from eagle_recipes.tuning.trial import TrialRecord

STEP_TIME_CHANGE = 0.1  # best.toml rescales train.max_steps to equal minutes when a step's time moved more than this


@dataclass
class TrialResult:
    index: int
    settings: dict[str, Any]
    status: str  # finished | stopped | unfinished
    reports: list[dict[str, Any]]
    step_s: float  # a training step's seconds, at the trial's pace
    seed_repeat: bool = False  # the recipe as written with another seed
    seeds_mean: float | None = None  # the recipe as written: the mean of its two seeds' last simulated tau

    @property
    def last_tau(self) -> float:
        return self.reports[-1]["simulated_tau"] if self.reports else 0.0

    @property
    def score(self) -> float:
        return self.last_tau if self.seeds_mean is None else self.seeds_mean


def collect(trials) -> list[TrialResult]:
    """Every trial's result from its record; the recipe as written scored by the mean of its two seeds when both
    used the whole budget (a better estimate of the one setting every margin is read against)."""
    results = []
    for trial in trials:
        record = TrialRecord(trial.folder)
        done, started = record.done(), record.started() or {}
        reports = record.reports()
        pace = reports[-1]["minutes"] * 60 / reports[-1]["step"] if reports else started.get("step_s") or 0.0
        results.append(TrialResult(trial.index, trial.settings, done["status"] if done else "unfinished", reports,
                                   float(pace), trial.seed_repeat))
    repeat = next((result for result in results if result.seed_repeat), None)
    if repeat and results[0].reports and len(repeat.reports) == len(results[0].reports):
        results[0].seeds_mean = (results[0].last_tau + repeat.last_tau) / 2
    return results


def winner_of(results: list[TrialResult]) -> TrialResult:
    """The best score among the trials that reached the most reports (the whole budget, unless none did); the
    seed repeat is the recipe as written, not a candidate."""
    candidates = [result for result in results if not result.seed_repeat]
    most = max(len(result.reports) for result in candidates)
    return max((r for r in candidates if len(r.reports) == most), key=lambda r: (r.score, -r.index))


def margin(winner: TrialResult, baseline: TrialResult) -> tuple[float, int]:
    """Winner's score minus the recipe as written's at the last report both made (their scores when that is both
    ones' last); and that report (1-based)."""
    report = min(len(winner.reports), len(baseline.reports)) - 1
    if report == len(winner.reports) - 1 == len(baseline.reports) - 1:
        return winner.score - baseline.score, report + 1
    return winner.reports[report]["simulated_tau"] - baseline.reports[report]["simulated_tau"], report + 1


def seed_spread(results: list[TrialResult], report: int) -> float | None:
    """How far another seed moves the recipe as written's simulated tau, at `report` (1-based) or the last report
    both made."""
    repeat = next((result for result in results if result.seed_repeat), None)
    if repeat is None or not repeat.reports or not results[0].reports:
        return None
    at = min(report, len(repeat.reports), len(results[0].reports)) - 1
    return abs(repeat.reports[at]["simulated_tau"] - results[0].reports[at]["simulated_tau"])


def score_text(result: TrialResult) -> str:
    if result.seeds_mean is None:
        return f"{result.score:.3f}"
    return f"{result.score:.3f} (mean of {result.last_tau:.3f} and seed + 1)"


def trial_name(result: TrialResult) -> str:
    return f"{result.index}" + (" (as written)" if result.index == 0 else
                                " (as written, seed + 1)" if result.seed_repeat else "")


def describe(settings: dict[str, Any]) -> str:
    return " ".join(f"{key}={toml_value(value)}" for key, value in settings.items())


def write_table(folder: Path, results: list[TrialResult], winner: TrialResult, hardware: str) -> None:
    keys = list(results[0].settings)
    header = ["trial", *keys, "status", "steps", "minutes", "simulated tau"]
    rows = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for result in sorted(results, key=lambda r: (-len(r.reports), -r.score)):
        last = result.reports[-1] if result.reports else {}
        name = trial_name(result) + (" **best**" if result is winner else "")
        rows.append("| " + " | ".join([name, *(toml_value(result.settings[k]) for k in keys), result.status,
                                        str(last.get("step", 0)), f"{last.get('minutes', 0):.2f}",
                                        score_text(result)]) + " |")
    write_text(folder / TABLE, f"Measured on {hardware}.\n\n" + "\n".join(rows) + "\n")
    write_jsonl(folder / RESULTS, [{"index": r.index, "settings": r.settings, "seed_repeat": r.seed_repeat,
                                    "status": r.status, "step_s": r.step_s, "score": r.score, "last_tau": r.last_tau,
                                    "reports": r.reports}
                                   for r in results])


def plot(folder: Path, results: list[TrialResult], winner: TrialResult, hardware: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(7.5, 4.5))
    for result in results:
        minutes = [r["minutes"] for r in result.reports]
        taus = [r["simulated_tau"] for r in result.reports]
        if result.seed_repeat:
            axis.plot(minutes, taus, marker=".", linewidth=1.2, color="grey", linestyle=":",
                      label="as written, another seed")
        elif result is winner or result.index == 0:
            short = " ".join(f"{key.split('.')[-1]}={toml_value(value)}" for key, value in result.settings.items())
            label = ("best: " if result is winner else "as written: ") + short
            axis.plot(minutes, taus, marker="o", linewidth=2.2, label=label,
                      color="tab:red" if result is winner else "black", linestyle="-" if result is winner else "--")
        else:
            axis.plot(minutes, taus, marker=".", linewidth=0.8, alpha=0.45, color="tab:blue")
    axis.set_xlabel("training minutes")
    axis.set_ylabel("simulated tau (held-out split)")
    axis.set_title(f"tune: {len(results)} trials, ASHA ({hardware})", fontsize=10)
    axis.legend(fontsize=7, loc="lower right")
    axis.grid(alpha=0.3)
    figure.tight_layout()
    path = folder / PLOT
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path


def best_table(recipe: Recipe, winner: TrialResult, baseline: TrialResult,
               budget_in_minutes: bool) -> tuple[dict, list[str]]:
    """The recipe's own table (command-line overrides applied) with the winning settings, its relative paths
    still relative to the recipe's folder (best.toml lives in the run's), its output folder the tune's, without
    [tune]; and the lines that say what changed."""
    raw = tomllib.loads(recipe.path.read_text(encoding="utf-8"))
    parsed, _ = parse_overrides(recipe.overrides, str(recipe.path))
    raw, _ = apply_overrides(raw, parsed, str(recipe.path))
    changed = {key: value for key, value in winner.settings.items() if value != baseline.settings[key]}
    winning, _ = parse_overrides([f"{key}={toml_value(value)}" for key, value in changed.items()], str(recipe.path))
    table, _ = apply_overrides(raw, winning, str(recipe.path))
    table.pop("tune", None)
    notes = [f"{key} = {toml_value(value)} (was {toml_value(baseline.settings[key])})"
             for key, value in changed.items()]
    max_steps = recipe.train.max_steps
    if (budget_in_minutes and max_steps and "train.max_steps" not in winner.settings and winner.step_s
            and baseline.step_s and abs(winner.step_s / baseline.step_s - 1) > STEP_TIME_CHANGE):
        steps = max(1, round(max_steps * baseline.step_s / winner.step_s))
        table.setdefault("train", {})["max_steps"] = steps
        notes.append(f"train.max_steps = {steps} (was {max_steps}): a step takes {winner.step_s:.3f} s against "
                     f"{baseline.step_s:.3f} s, so the same training minutes")
    if not table.get("relative_to"):  # paths as written, from where best.toml lives: the same fingerprints
        table = {"relative_to": str(recipe.folder), **table}
    if Recipe(recipe.path, apply_defaults(table)).output_dir != recipe.output_dir:  # the tune ran with --output-dir
        table["output_dir"] = str(recipe.output_dir)
    return table, notes


def write_best(folder: Path, recipe: Recipe, table: dict, notes: list[str], score_line: str) -> Path:
    import tomli_w

    header = [f"# {BEST_RECIPE}: {recipe.path.name} with the settings `eagle-recipes tune` measured best",
              f"# ({score_line}).", *(["# changed:"] + [f"#   {note}" for note in notes] if notes else
                                      ["# no change: the recipe as written scored best"]),
              f"# Paths are relative to {recipe.folder} (relative_to), as in {recipe.path.name}.", ""]
    path = folder / BEST_RECIPE
    write_text(path, "\n".join(header) + tomli_w.dumps(table))
    return path
