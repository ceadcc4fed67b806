"""The learning-curve benchmark's figures: curves over steps, levers at equal minutes, the data axis."""

from __future__ import annotations

from pathlib import Path

from eagle_recipes.data.formats import HELD_OUT_SPLIT


def plot_curves(rows: list[dict], path: Path) -> None:
    """tau against training tokens and CPU-minutes, one curve per variant trained at several step counts."""
    names = [n for n in dict.fromkeys(r["variant"] for r in rows) if sum(r["variant"] == n for r in rows) > 1]
    if not names:  # variants trained once each: plot_levers draws them
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, 2, figsize=(11, 4.5))
    for name in names:  # curves only: one-point variants are in the table
        mine = sorted((r for r in rows if r["variant"] == name), key=lambda r: r["steps"])
        for split, style in (("mt-bench", "-o"), (HELD_OUT_SPLIT, "--s")):
            taus = [r["tau"][split]["acceptance_length"] for r in mine]
            axes[0].plot([r["tokens"] for r in mine], taus, style, label=f"{name}, {split}")
            axes[1].plot([r["train_cpu_min"] for r in mine], taus, style, label=f"{name}, {split}")
            for row, tau in zip(mine, taus):
                axes[0].annotate(str(row["steps"]), (row["tokens"], tau), fontsize=7, xytext=(3, 3),
                                 textcoords="offset points")
    axes[0].set_xscale("log")
    axes[0].set_xlabel("training tokens seen (labels: optimizer steps)")
    axes[1].set_xlabel("CPU-minutes of training from cached features")
    for axis in axes:
        axis.set_ylabel("tau (k = 5, greedy)")
        axis.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    figure.suptitle("learning curve: tau against training tokens and compute")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def plot_levers(rows: list[dict], path: Path) -> None:
    """One bar pair per variant trained once (equal minutes): tau - 1 on each prompt set, the baseline's marked."""
    single = [r for r in rows if sum(r["variant"] == o["variant"] for o in rows) == 1]
    if not single:
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(8, 0.45 * len(single) + 1.5))
    positions = range(len(single))
    for offset, (split, color) in enumerate((("mt-bench", "tab:blue"), (HELD_OUT_SPLIT, "tab:orange"))):
        gains = [r["tau"][split]["acceptance_length"] - 1 for r in single]
        axis.barh([p + 0.4 * offset for p in positions], gains, height=0.4, color=color, label=split)
        for position, row, gain in zip(positions, single, gains):
            axis.annotate(f"{gain + 1:.3f}", (gain, position + 0.4 * offset), fontsize=7, xytext=(2, -3),
                          textcoords="offset points")
    axis.set_yticks([p + 0.2 for p in positions], [f"{r['variant']} ({r['steps']} steps)" for r in single])
    axis.invert_yaxis()
    axis.set_xlabel("tau - 1 (k = 5, greedy, simulated): tokens gained per verify step")
    axis.legend(fontsize=7)
    axis.grid(alpha=0.3, axis="x")
    axis.set_title("training levers at equal minutes")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def plot_data_axis(rows: list[dict], path: Path) -> None:
    """tau against the number of training conversations (at equal epochs), one line per variant and prompt set."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(7, 4.5))
    for name in dict.fromkeys(r["variant"] for r in rows):
        mine = sorted((r for r in rows if r["variant"] == name), key=lambda r: r["conversations"])
        for split, style in (("mt-bench", "-o"), (HELD_OUT_SPLIT, "--s")):
            axis.plot([r["conversations"] for r in mine], [r["tau"][split]["acceptance_length"] for r in mine], style,
                      label=f"{name}, {split}")
    axis.set_xscale("log", base=2)
    axis.set_xlabel("training conversations (equal epochs)")
    axis.set_ylabel("tau (k = 5, greedy, simulated)")
    axis.grid(alpha=0.3)
    axis.legend(fontsize=7)
    axis.set_title("the data axis: tau against conversations")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
