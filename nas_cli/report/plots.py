"""Learning curves of every job, from each job's metrics.csv."""

from __future__ import annotations

from pathlib import Path

import pandas as pd


def learning_curves(frame: pd.DataFrame, labels: list[str], out: Path) -> Path | None:
    """Loss and accuracy against epoch, one colour per job (solid: validation, dashed: training)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(11, 4.2))
    drawn = 0
    for (_, job), label in zip(frame.iterrows(), labels):
        path = Path(job["_metrics"])
        if not path.is_file():
            continue
        metrics = pd.read_csv(path)
        if metrics.empty:
            continue
        line, = ax_loss.plot(metrics["epoch"], metrics["val_loss"], label=label)
        ax_loss.plot(metrics["epoch"], metrics["train_loss"], "--", color=line.get_color(), alpha=0.7)
        ax_acc.plot(metrics["epoch"], metrics["val_acc"], color=line.get_color(), label=label)
        ax_acc.plot(metrics["epoch"], metrics["train_acc"], "--", color=line.get_color(), alpha=0.7)
        drawn += 1
    if not drawn:
        plt.close(fig)
        return None
    ax_loss.set(xlabel="epoch", ylabel="loss (solid: val, dashed: train)", yscale="log")
    ax_acc.set(xlabel="epoch", ylabel="accuracy (solid: val, dashed: train)")
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
    ax_acc.legend(fontsize="small" if drawn <= 12 else "x-small", ncol=1 if drawn <= 12 else 2)
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out
