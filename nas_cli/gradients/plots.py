"""PNG plots of a grad-bench run: loss decrease vs lr (a panel per num_dim), best loss decrease vs num_dim."""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def loss_decrease_vs_lr(curves: pd.DataFrame, path: Path) -> Path:
    """One panel per num_dim, one line per estimator: mean loss decrease (over inits x batches) vs lr."""
    plt = _pyplot()
    dims = sorted(curves["num_dim"].unique())
    cols = min(3, len(dims))
    nrows = math.ceil(len(dims) / cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(5 * cols, 3.8 * nrows), squeeze=False)
    for ax, d in zip(axes.flat, dims):
        for name, part in curves[curves["num_dim"] == d].groupby("estimator", sort=True):
            part = part.sort_values("lr")
            ax.plot(part["lr"], part["loss_decrease"], marker=".", label=name)
        ax.set_xscale("log")
        ax.axhline(0, color="grey", lw=0.6)
        ax.set_title(f"num_dim = {d}")
        ax.set_xlabel("learning rate")
        ax.set_ylabel("loss decrease after one step")
        values = curves[curves["num_dim"] == d]["loss_decrease"]
        top, low = float(values.max()), float(values.min())
        if top > 0 and low < -top:  # a step too large blows the loss up: keep the useful range readable
            ax.set_ylim(-top, 1.1 * top)
            ax.set_title(f"num_dim = {d} (y clipped at -{top:.3g})")
    for ax in list(axes.flat)[len(dims) :]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def best_decrease_vs_dim(best: pd.DataFrame, path: Path) -> Path:
    """One line per estimator: the loss decrease at its best lr vs num_dim."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    for name, part in best.groupby("estimator", sort=True):
        part = part.sort_values("num_dim")
        ax.plot(part["num_dim"], part["best_loss_decrease"], marker="o", label=name)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("num_dim")
    ax.set_ylabel("best loss decrease (one step)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
