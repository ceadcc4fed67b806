"""Experiment trackers, through their own libraries: TensorBoard (`torch.utils.tensorboard`), MLflow and Weights &
Biases, as `[train] report_to` lists them. Each is an optional extra (`pip install 'eagle-recipes[tensorboard]'`,
`[mlflow]`, `[wandb]`).

Training logs every optimizer step (loss and accuracy per TTT step, lr, grad norm, tokens/s) from rank 0, live;
evaluate adds tau and per-position acceptance at the last training step; the recipe is the run's configuration.
One run per output folder: its MLflow and W&B run ids are kept in `<output_dir>/trackers.json`, so a resumed
training and the evaluate stage continue the same run (TensorBoard drops what a killed run logged past its last
checkpoint). Where: TensorBoard `<output_dir>/tensorboard/`; MLflow `MLFLOW_TRACKING_URI`, else the file store
`<output_dir>/mlruns/`; W&B project `WANDB_PROJECT` (else "eagle-recipes"), `WANDB_MODE=offline` honoured.
"""

from __future__ import annotations

import importlib.util
import json
import os
import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# tracker -> (module that must import, the extra that installs it)
EXTRAS = {"tensorboard": ("tensorboard", "tensorboard"), "mlflow": ("mlflow", "mlflow"), "wandb": ("wandb", "wandb")}
IDS_FILE = "trackers.json"


def missing_extras(names: list[str]) -> list[str]:
    """The `pip install` lines for trackers whose library is not installed."""
    return [f"pip install 'eagle-recipes[{EXTRAS[name][1]}]'" for name in names
            if importlib.util.find_spec(EXTRAS[name][0]) is None]


def step_scalars(metrics: dict[str, Any]) -> dict[str, float]:
    """One metrics.jsonl row as tracker scalars: per TTT step, and the optimizer step's own."""
    scalars = {f"train/loss/ttt{j}": float(v) for j, v in enumerate(metrics["loss"])}
    scalars.update({f"train/accuracy/ttt{j}": float(v) for j, v in enumerate(metrics["accuracy"])})
    scalars.update({f"train/{key}": float(metrics[key]) for key in ("lr", "grad_norm", "tokens_per_s")})
    if "simulated_tau" in metrics:
        scalars["train/simulated_tau"] = float(metrics["simulated_tau"])
    return scalars


def eval_scalars(report: dict[str, Any]) -> dict[str, float]:
    """The evaluate report as tracker scalars: tau and acceptance per position, per prompt set."""
    scalars = {}
    for name, entry in report["sets"].items():
        scalars[f"eval/{name}/tau"] = float(entry["acceptance_length"])
        scalars.update({f"eval/{name}/acceptance/pos{i + 1}": float(rate)
                        for i, rate in enumerate(entry["per_position"])})
    return scalars


def flat_config(data: dict, prefix: str = "") -> dict[str, str]:
    """The recipe as flat `section.key` parameters (MLflow takes strings)."""
    flat = {}
    for key, value in data.items():
        if isinstance(value, dict):
            flat.update(flat_config(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = str(value)[:500]
    return flat


@dataclass(frozen=True)
class TrackingSpec:
    """Which trackers a run logs to and as what: the train stage's workers and the evaluate stage open the same
    run from it."""

    names: list[str]
    folder: str  # the run's output folder
    run_name: str
    config: dict[str, Any]  # the recipe

    def open(self, purge_after: int | None = None) -> "Trackers":
        return Trackers(list(self.names), Path(self.folder), self.run_name, self.config, purge_after=purge_after)


@dataclass
class Trackers:
    """The trackers of one run; `log(step, scalars)` goes to each."""

    names: list[str]
    folder: Path  # the run's output folder
    run_name: str
    config: dict[str, Any]
    purge_after: int | None = None  # TensorBoard: drop events past this step (a resumed training re-logs them)
    _open: list[Any] = field(default_factory=list)

    def __enter__(self) -> "Trackers":
        missing = missing_extras(self.names)
        if missing:
            from eagle_recipes.errors import UserError

            raise UserError(f"train.report_to needs: {'; '.join(missing)}")
        ids = _read_ids(self.folder)
        for name in self.names:
            self._open.append(OPENERS[name](self, ids))
        _write_ids(self.folder, ids)
        return self

    def __exit__(self, *exc: Any) -> None:
        for close in (tracker["close"] for tracker in self._open):
            close()

    def log(self, step: int, scalars: dict[str, float], final: bool = False) -> None:
        """final: results of the whole run (evaluate), logged at the last training step (W&B: the run summary,
        since its history only moves forward)."""
        for tracker in self._open:
            tracker["log"](step, scalars, final)


# ---------------------------------------------------------------- one opener per library: {"log", "close"}
def _open_tensorboard(trackers: Trackers, ids: dict) -> dict:
    from torch.utils.tensorboard import SummaryWriter

    purge = None if trackers.purge_after is None else trackers.purge_after + 1
    writer = SummaryWriter(str(trackers.folder / "tensorboard"), purge_step=purge)
    if not ids.get("tensorboard_config_written"):
        writer.add_text("recipe", "```\n" + json.dumps(trackers.config, indent=2) + "\n```")
        ids["tensorboard_config_written"] = True

    def log(step: int, scalars: dict[str, float], final: bool) -> None:
        for tag, value in scalars.items():
            writer.add_scalar(tag, value, step)

    return {"log": log, "close": writer.close}


def _open_mlflow(trackers: Trackers, ids: dict) -> dict:
    import mlflow

    uri = os.environ.get("MLFLOW_TRACKING_URI")
    if not uri:  # the run folder's own file store: MLflow 3 keeps it (in maintenance) behind this switch
        os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        uri = (trackers.folder / "mlruns").resolve().as_uri()
    mlflow.set_tracking_uri(uri)
    if ids.get("mlflow_run_id"):
        run = mlflow.start_run(run_id=ids["mlflow_run_id"])
    else:
        mlflow.set_experiment(os.environ.get("MLFLOW_EXPERIMENT_NAME") or "eagle-recipes")
        run = mlflow.start_run(run_name=trackers.run_name)
        mlflow.log_params(flat_config(trackers.config))
        ids["mlflow_run_id"] = run.info.run_id

    def log(step: int, scalars: dict[str, float], final: bool) -> None:
        mlflow.log_metrics({tag.replace("/", "."): value for tag, value in scalars.items()}, step=step)

    return {"log": log, "close": mlflow.end_run}


def _open_wandb(trackers: Trackers, ids: dict) -> dict:
    import wandb

    ids.setdefault("wandb_run_id", secrets.token_hex(4))  # W&B takes any short id of letters and digits
    run = wandb.init(project=os.environ.get("WANDB_PROJECT", "eagle-recipes"), name=trackers.run_name,
                     id=ids["wandb_run_id"], resume="allow", dir=str(trackers.folder), config=trackers.config)

    def log(step: int, scalars: dict[str, float], final: bool) -> None:
        run.summary.update(scalars) if final else run.log(scalars, step=step)

    return {"log": log, "close": run.finish}


OPENERS = {"tensorboard": _open_tensorboard, "mlflow": _open_mlflow, "wandb": _open_wandb}


def _read_ids(folder: Path) -> dict:
    try:
        return json.loads((folder / IDS_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def _write_ids(folder: Path, ids: dict) -> None:
    from eagle_recipes.atomic import write_json

    write_json(folder / IDS_FILE, ids)
