"""Learning curves of every job, from each job's metrics.csv (and steps.csv, when it has one)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd


def learning_curves(frame: pd.DataFrame, labels: list[str], out: Path) -> Path | None:
    """Loss and accuracy against epoch (solid: validation, dashed: training), one colour per job,
    and the per-iteration training loss with its exponential moving average."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_loss, ax_acc, ax_steps) = plt.subplots(1, 3, figsize=(16, 4.4))
    drawn = 0
    for (_, job), label in zip(frame.iterrows(), labels):
        path = Path(job["_metrics"])
        if not path.is_file():
            continue
        metrics = pd.read_csv(path)
        if metrics.empty or "epoch" not in metrics:
            continue  # not a training run (fuse-bn's rows are batch sizes)
        style = {"marker": "o", "markersize": 3} if len(metrics) <= 30 else {}
        line, = ax_loss.plot(metrics["epoch"], metrics["val_loss"], label=label, **style)
        color = line.get_color()
        ax_loss.plot(metrics["epoch"], metrics["train_loss"], "--", color=color, alpha=0.7)
        ax_acc.plot(metrics["epoch"], metrics["val_acc"], color=color, label=label, **style)
        ax_acc.plot(metrics["epoch"], metrics["train_acc"], "--", color=color, alpha=0.7)
        steps = path.with_name("steps.csv")
        if steps.is_file():
            curve = pd.read_csv(steps)
            ax_steps.plot(curve["iteration"], curve["loss"], color=color, alpha=0.15, linewidth=0.8)
            ax_steps.plot(curve["iteration"], curve["loss_ema"], color=color, label=label)
        drawn += 1
    if not drawn:
        plt.close(fig)
        return None
    ax_loss.set(xlabel="epoch", ylabel="loss (solid: val, dashed: train)", yscale="log")
    ax_acc.set(xlabel="epoch", ylabel="accuracy (solid: val, dashed: train)")
    ax_steps.set(xlabel="iteration", ylabel="training loss (faint: raw, line: EMA)", yscale="log")
    for ax in (ax_loss, ax_acc, ax_steps):
        ax.grid(alpha=0.3)
    ax_acc.legend(fontsize="small" if drawn <= 12 else "x-small", ncol=1 if drawn <= 12 else 2)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
