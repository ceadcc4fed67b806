"""metrics.jsonl: one line per optimizer step (loss and accuracy per TTT step, lr, grad norm, tokens/s), written by
rank 0; its summary for the stage manifest and its plots (loss.png, accuracy.png)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from eagle_recipes.atomic import atomic_path, write_text
from eagle_recipes.run_folder import ACCURACY_PLOT, LOSS_PLOT, SIMULATED_TAU_PLOT


class MetricsLog:
    def __init__(self, path: Path):
        self.path = Path(path)

    def append(self, row: dict[str, Any]) -> None:
        with open(self.path, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(row) + "\n")

    def rows(self) -> list[dict[str, Any]]:
        if not self.path.exists():
            return []
        return [json.loads(line) for line in self.path.read_text(encoding="utf-8").splitlines() if line.strip()]

    def truncate_after(self, last_step: int) -> None:
        """After a resume, drop the lines of steps that will be trained again (and a line cut by a kill)."""
        if not self.path.exists():
            return
        kept = [line for line in self.path.read_text(encoding="utf-8").splitlines()
                if _step_of(line) <= last_step]
        write_text(self.path, "".join(line + "\n" for line in kept))

    def summarize(self, final_step: int, count: int, resumed_step: int) -> dict[str, Any]:
        rows = self.rows()
        tail = rows[-max(1, len(rows) // 10):]
        metrics = {"final_loss": float(np.mean([r["loss"][0] for r in tail])),
                   "accuracy_per_step": np.mean([r["accuracy"] for r in tail], axis=0).round(4).tolist(),
                   "tokens_per_s": float(np.mean([r["tokens_per_s"] for r in rows]))}
        simulated = [r for r in rows if "simulated_tau" in r]
        if simulated:
            best = max(simulated, key=lambda r: r["simulated_tau"])
            metrics.update(simulated_tau=simulated[-1]["simulated_tau"], best_simulated_tau=best["simulated_tau"],
                           best_simulated_step=best["step"])
        return {"counts": {"steps": final_step, "sequences": count, "resumed_from_step": resumed_step,
                           "steps_this_run": final_step - resumed_step}, "metrics": metrics}

    def plot(self, out: Path, step_label: str = "TTT step") -> list[str]:
        """loss.png and accuracy.png: per position of the drafter's unroll (`step_label`: a TTT step, a block
        slot) over training."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        rows = self.rows()
        if not rows:
            return []
        steps = [r["step"] for r in rows]
        written = []
        for key, title, name in (("loss", f"loss per {step_label}", LOSS_PLOT),
                                 ("accuracy", f"top-1 accuracy per {step_label}", ACCURACY_PLOT)):
            figure, axis = plt.subplots(figsize=(7, 4))
            series = np.array([r[key] for r in rows])
            window = max(1, len(rows) // 50)
            for j in range(series.shape[1]):
                smooth = np.convolve(series[:, j], np.ones(window) / window, mode="valid")
                axis.plot(steps[window - 1:], smooth, label=f"{step_label} {j}")
            axis.set_xlabel("optimizer step")
            axis.set_title(title)
            axis.legend(fontsize=7, ncol=2)
            written.append(_save(figure, out / name))
        simulated = [r for r in rows if "simulated_tau" in r]
        if simulated:
            figure, axis = plt.subplots(figsize=(7, 4))
            axis.plot([r["step"] for r in simulated], [r["simulated_tau"] for r in simulated], "-o")
            axis.set_xlabel("optimizer step")
            axis.set_ylabel("tau (held-out, greedy, simulated)")
            axis.set_title("simulated acceptance length")
            written.append(_save(figure, out / SIMULATED_TAU_PLOT))
        return written


def _save(figure, path: Path) -> str:
    """The figure as a PNG, written whole or not at all; closed (pyplot keeps every open figure)."""
    import matplotlib.pyplot as plt

    figure.tight_layout()
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format="png", dpi=100)
    plt.close(figure)
    return str(path)


def _step_of(line: str) -> float:
    """The step of a metrics line; a line cut by a kill (or blank) counts as after every step: dropped."""
    try:
        return json.loads(line)["step"]
    except (ValueError, KeyError, TypeError):
        return float("inf")
