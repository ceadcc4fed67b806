"""A tune on the console: a progress bar over the trials, a line per finished trial, then the ranking, the winner,
its margin over the recipe as written and the command that runs it."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from eagle_recipes.tuning.results import describe, score_text, trial_name


def tune_command(recipe, address: str | None, verbose: bool, console: Console, print_table) -> int:
    """`eagle-recipes tune`; `print_table(title, columns, rows)` shows the ranking (the command line's tables)."""
    from eagle_recipes.errors import UserError
    from eagle_recipes.tuning.tuner import budget_of, tune

    if not recipe.tune.space:
        raise UserError(f"{recipe.path}: [tune] has no space to search; add e.g. [tune] space = "
                        '{ "train.lr" = [3e-4, 1e-3], "draft.overrides.qk_norm" = [true, false] }')
    with TuneDisplay(console, budget_of(recipe).reports) as display:
        outcome = tune(recipe, address, verbose, display,
                       lambda line: console.print(line, markup=False, highlight=False))
    print_outcome(console, outcome, print_table)
    return 0


class TuneDisplay:
    def __init__(self, console: Console, reports: int):
        self.console, self.reports = console, reports
        self.progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                 TimeElapsedColumn(), console=console, transient=True)
        self.task = self.progress.add_task("trials", total=None)

    def trials(self, count: int) -> None:
        self.progress.update(self.task, total=count)

    def __enter__(self) -> "TuneDisplay":
        self.progress.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.progress.stop()

    def show(self, trial, event: str, result: dict | None) -> None:
        label = trial.label
        if event == "result" and result:
            self.progress.update(self.task, description=f"{label}: report {result['training_iteration']}/"
                                                        f"{self.reports}, tau {result['simulated_tau']:.3f}")
            return
        if event in ("finished", "stopped"):
            self.progress.advance(self.task)
        self.progress.console.print(f"{label} {event}: {describe(trial.settings)}", markup=False, highlight=False)


def print_outcome(console: Console, outcome, print_table) -> None:
    keys = list(outcome.results[0].settings)
    rows = []
    for result in sorted(outcome.results, key=lambda r: (-len(r.reports), -r.score)):
        last = result.reports[-1] if result.reports else {}
        rows.append([trial_name(result), *(str(result.settings[k]) for k in keys),
                     result.status, str(last.get("step", 0)), f"{last.get('minutes', 0):.2f}", score_text(result)])
    print_table(f"tune: {len(outcome.results)} trials ({outcome.hardware})",
                ["trial", *keys, "status", "steps", "minutes", "tau"], rows)
    winner = outcome.winner
    console.print(f"best: trial {winner.index}: {describe(winner.settings)}: simulated tau {winner.score:.3f}, "
                  f"{outcome.margin:+.3f} over the recipe as written (at report {outcome.margin_report}, equal "
                  "budget)", markup=False, highlight=False)
    console.print(verdict(outcome), markup=False, highlight=False)
    for note in outcome.notes:
        console.print(f"  best.toml: {note}", markup=False, highlight=False)
    console.print(f"table {outcome.table}, plot {outcome.plot}", markup=False, highlight=False)
    console.print(f"run it: eagle-recipes run {outcome.best_recipe}", markup=False, highlight=False)


def verdict(outcome) -> str:
    """Whether the winner's lead means anything: against the spread another seed gives the recipe as written."""
    if outcome.winner.index == 0:
        return "the recipe as written ranked first: best.toml is the recipe as written"
    if outcome.spread is None:
        return "(no seed repeat: tune.seed_repeat = true measures the spread a lead must beat)"
    if outcome.margin <= outcome.spread:
        return (f"a tie: the lead is within the seed-to-seed spread ({outcome.spread:.3f}); the recipe as written "
                "is as good on this measure")
    return f"the lead is beyond the seed-to-seed spread ({outcome.spread:.3f})"
