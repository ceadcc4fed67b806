"""One trial of a tune, inside a Ray Tune trial actor: train one variant of the recipe's draft on the run's features
for the tune's budget, measuring simulated tau on the held-out split `reports` times, evenly spaced; the scheduler
(ASHA) may stop it at any report.

The budget is training minutes by default: the trial times its own step first and re-aims its number of steps at
every report from its pace so far, so a slower optimizer gets fewer steps, as it would in the same wall time. Its
learning-rate schedule spans the whole budget (a re-aim moves its end by a few percent).

Every report goes to the trial's record (`<output_dir>/tune/trials/<key>/reports.jsonl`) as it is made; the tuner
marks the record done when Ray Tune ends the trial (finished or stopped). A tune run again replays a done trial's
reports instead of training it again, so a killed tune resumes without redoing finished trials.
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from eagle_recipes.atomic import write_json
from eagle_recipes.run_folder import TRIAL_DONE as DONE, TRIAL_REPORTS as REPORTS, TRIAL_STARTED as STARTED

TIMED_STEPS = 5  # steps timed (after one warm-up step) to turn the minutes into steps


@dataclass(frozen=True)
class Budget:
    minutes: float  # training minutes (steps from the trial's own step time) ...
    steps: int  # ... or, when > 0, this many steps
    reports: int  # simulated-tau measurements, evenly spaced


@dataclass(frozen=True)
class TrialRecord:
    """What a trial leaves in its folder: when it started and how long its steps are, its reports, whether done."""

    folder: Path

    def reports(self) -> list[dict[str, Any]]:
        path = self.folder / REPORTS
        if not path.is_file():
            return []
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]

    def started(self) -> dict[str, Any] | None:
        path = self.folder / STARTED
        return json.loads(path.read_text()) if path.is_file() else None

    def done(self) -> dict[str, Any] | None:
        path = self.folder / DONE
        return json.loads(path.read_text()) if path.is_file() else None

    def start(self, info: dict[str, Any]) -> None:
        """A fresh record (a trial killed before it was done starts over)."""
        shutil.rmtree(self.folder, ignore_errors=True)
        self.folder.mkdir(parents=True)
        write_json(self.folder / STARTED, info)

    def append(self, report: dict[str, Any]) -> None:
        with open(self.folder / REPORTS, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(report) + "\n")
            handle.flush()
            os.fsync(handle.fileno())

    def mark_done(self, status: str) -> None:
        write_json(self.folder / DONE, {"status": status, "reports": len(self.reports())})


def timed_step_seconds(config) -> float:
    """Seconds one training step of this configuration takes here (the median of TIMED_STEPS after a warm-up),
    on a throwaway copy of the training state."""
    from eagle_recipes.training.loop import setup, train_step

    training = setup(config, 0, 1, 0)
    seconds = []
    for step in range(TIMED_STEPS + 1):
        started = time.perf_counter()
        train_step(training)
        if step:
            seconds.append(time.perf_counter() - started)
    return statistics.median(seconds)


def run_trial(param_space: dict[str, Any]) -> None:
    """The Ray Tune trainable (function API). `param_space["trial"]`: folder, settings, config (a TrainConfig's
    fields), budget (a Budget's)."""
    from ray import tune

    from eagle_recipes.training.config import TrainConfig
    from eagle_recipes.training.loop import setup, simulate, train_step

    trial = param_space["trial"]
    record = TrialRecord(Path(trial["folder"]))
    if record.done() is not None:  # finished by an earlier tune: its reports, not its training again
        for report in record.reports():
            tune.report(report)
        return
    budget, config = Budget(**trial["budget"]), TrainConfig(**trial["config"])
    step_s = 0.0 if budget.steps else timed_step_seconds(config)
    total = budget.steps or max(budget.reports, int(budget.minutes * 60 / step_s))
    record.start({"settings": trial["settings"], "step_s": step_s, "total_steps": total, "started_at": time.time()})
    training = setup(config, 0, 1, 0)
    training.total = total  # the schedule spans the budget
    seconds, reported = 0.0, 0
    while training.step < training.total:
        started = time.perf_counter()
        metrics = train_step(training)
        seconds += time.perf_counter() - started
        if training.step < next_report(training.total, budget.reports, reported):
            continue
        reported += 1
        if not budget.steps and reported < budget.reports:
            # re-aimed at every report from the pace so far: a few timed steps misjudge it by up to ~10%
            training.total = max(training.step + budget.reports - reported, round(budget.minutes * 60 * training.step
                                                                                    / seconds))
        report = {"step": training.step, "minutes": round(seconds / 60, 4), "loss0": metrics["loss"][0],
                  "accuracy0": metrics["accuracy"][0], **simulate(training)}
        record.append(report)
        tune.report(report)


def next_report(total: int, reports: int, reported: int) -> int:
    """The step of the next report of a trial of `total` steps that has made `reported` of its `reports`, evenly
    spaced, the last one at the last step."""
    return max(1, round(total * (reported + 1) / reports))
