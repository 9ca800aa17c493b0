"""The learning curve of an agent run (dqn, pg): training and evaluation returns against steps."""

from __future__ import annotations

from pathlib import Path

import pandas as pd


def returns_plot(metrics_csv: Path, out: Path, threshold: float | None = None) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = pd.read_csv(metrics_csv)
    fig, ax = plt.subplots(figsize=(8, 4.5))
    ax.plot(rows["step"], rows["return"], label="training return (mean of last 100 episodes)")
    evals = rows.dropna(subset=["eval_return"])
    ax.plot(evals["step"], evals["eval_return"], "o-", label="greedy evaluation (mean)")
    if "eval_return_sampled" in rows:  # pg: the policy's own samples too
        ax.plot(evals["step"], evals["eval_return_sampled"], "s--", label="sampled-action evaluation (mean)")
    if threshold is not None:
        ax.axhline(threshold, color="grey", linestyle="--", label=f"solved ({threshold:g})")
    ax.set(xlabel="environment step", ylabel="episode return")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
