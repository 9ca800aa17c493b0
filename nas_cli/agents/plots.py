"""The learning curves of agent runs: returns against steps (dqn, pg), fitness against generations (ga)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pandas as pd


def returns_plot(metrics_csv: Path, out: Path, threshold: float | None = None) -> Path:
    """Training returns and evaluations (greedy, and pg's sampled actions) against environment steps."""

    def draw(ax, rows: pd.DataFrame) -> None:
        ax.plot(rows["step"], rows["return"], label="training return (mean of last 100 episodes)")
        evals = rows.dropna(subset=["eval_return"])
        ax.plot(evals["step"], evals["eval_return"], "o-", label="greedy evaluation (mean)")
        if "eval_return_sampled" in rows:  # pg: the policy's own samples too
            ax.plot(evals["step"], evals["eval_return_sampled"], "s--", label="sampled-action evaluation (mean)")

    return _curves(metrics_csv, out, threshold, draw, "environment step", "episode return")


def fitness_plot(metrics_csv: Path, out: Path, threshold: float | None = None) -> Path | None:
    """Best, mean and median fitness and the elite's re-evaluated fitness against generations."""
    if not Path(metrics_csv).is_file():
        return None

    def draw(ax, rows: pd.DataFrame) -> None:
        for key, label in (
            ("best_fitness", "best member"),
            ("elite_fitness", "elite (re-evaluated)"),
            ("median_fitness", "median member"),
            ("mean_fitness", "mean member"),
        ):
            ax.plot(rows["generation"], rows[key], label=label)

    return _curves(metrics_csv, out, threshold, draw, "generation", "fitness (mean episode return)")


def _curves(metrics_csv: Path, out: Path, threshold: float | None, draw: Callable, xlabel: str, ylabel: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.5))
    draw(ax, pd.read_csv(metrics_csv))
    if threshold is not None:
        ax.axhline(threshold, color="grey", linestyle="--", label=f"solved ({threshold:g})")
    ax.set(xlabel=xlabel, ylabel=ylabel)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
