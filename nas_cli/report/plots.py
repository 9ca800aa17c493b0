"""Learning curves of every job, from each job's metrics.csv (and steps.csv, when it has one).

The x axis is a choice (``X_AXES``): ``epoch`` (the default), ``iterations`` (optimizer steps) or
``samples_seen`` (training samples). Comparing runs at different batch sizes needs the last two: at the same
epoch a batch of 16 has taken 64x the steps of a batch of 1024, at the same samples seen both have spent the
same data. The per-iteration losses of steps.csv are placed on that axis by linear interpolation between the
epoch ends, where metrics.csv gives iterations, samples seen and epoch together. Every plot's numbers are
written beside it as CSV (one row per job and epoch), so what a figure shows can be read back.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from nas_cli.runs.files import STEPS

X_AXES = ("epoch", "iterations", "samples_seen")
X_LABELS = {"epoch": "epoch", "iterations": "iteration (optimizer steps)", "samples_seen": "training samples seen"}
LOSS_COLUMNS = ["train_loss", "val_loss"]
# the middle panel: a job's score curve (solid) and its companion (dashed), the first pair its metrics have
SCORES = [
    ("val_acc", "train_acc", "accuracy (solid: val, dashed: train)"),
    ("val_map50_nms", "val_map_nms", "val mAP with NMS (solid: @0.5, dashed: @[.5:.95])"),
]


def plot_path(out_dir: Path, x: str = "epoch") -> Path:
    """``curves.png`` for epochs (the x axis of most runs), ``curves_<x>.png`` for the others."""
    return out_dir / ("curves.png" if x == "epoch" else f"curves_{x}.png")


def learning_curves(frame: pd.DataFrame, labels: list[str], out: Path, x: str = "epoch") -> Path | None:
    """Loss and accuracy against ``x`` (solid: validation, dashed: training), one colour per job, and the
    per-iteration training loss with its exponential moving average; the drawn numbers go to ``out``.csv."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_loss, ax_acc, ax_steps) = plt.subplots(1, 3, figsize=(16, 4.4))
    drawn: list[pd.DataFrame] = []
    for (_, job), label in zip(frame.iterrows(), labels):
        metrics = _curve(Path(job["_metrics"]), x)
        if metrics is None:
            continue
        xs = metrics[x]
        style = {"marker": "o", "markersize": 3} if len(metrics) <= 30 else {}
        (line,) = ax_loss.plot(xs, metrics["val_loss"], label=label, **style)
        color = line.get_color()
        ax_loss.plot(xs, metrics["train_loss"], "--", color=color, alpha=0.7)
        solid, dashed, score_label = next(pair for pair in SCORES if set(pair[:2]) <= set(metrics.columns))
        ax_acc.plot(xs, metrics[solid], color=color, label=label, **style)
        ax_acc.plot(xs, metrics[dashed], "--", color=color, alpha=0.7)
        steps = _steps_on(metrics, Path(job["_metrics"]).with_name(STEPS), x)
        if steps is not None:
            ax_steps.plot(steps[x], steps["loss"], color=color, alpha=0.15, linewidth=0.8)
            ax_steps.plot(steps[x], steps["loss_ema"], color=color, label=label)
        drawn.append(metrics[["epoch", *_extra(x), *LOSS_COLUMNS, solid, dashed]].assign(job=job["job"], label=label))
    if not drawn:
        plt.close(fig)
        return None
    label = X_LABELS[x]
    ax_loss.set(xlabel=label, ylabel="loss (solid: val, dashed: train)", yscale="log")
    ax_acc.set(xlabel=label, ylabel=score_label)
    ax_steps.set(xlabel=label, ylabel="training loss (faint: raw, line: EMA)", yscale="log")
    for ax in (ax_loss, ax_acc, ax_steps):
        ax.grid(alpha=0.3)
        if x == "iterations":  # runs at different batch sizes span decades of steps
            ax.set_xscale("log")
    ax_acc.legend(fontsize="small" if len(drawn) <= 12 else "x-small", ncol=1 if len(drawn) <= 12 else 2)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    data = pd.concat(drawn, ignore_index=True)
    data[["job", "label", *[c for c in data.columns if c not in ("job", "label")]]].to_csv(
        out.with_suffix(".csv"), index=False
    )
    return out


def _extra(x: str) -> list[str]:
    return [] if x == "epoch" else [x]


def _curve(path: Path, x: str) -> pd.DataFrame | None:
    """A job's metrics.csv when it is a training curve with the ``x`` column (else None: not drawn)."""
    if not path.is_file():
        return None
    try:
        metrics = pd.read_csv(path)
    except pd.errors.EmptyDataError:
        return None
    needed = {"epoch", x, *LOSS_COLUMNS}
    if (
        metrics.empty
        or not needed <= set(metrics.columns)
        or not any(set(p[:2]) <= set(metrics.columns) for p in SCORES)
    ):
        return None  # not a training run (fuse-bn's rows are batch sizes), or one from before the column
    return metrics


def _steps_on(metrics: pd.DataFrame, path: Path, x: str) -> pd.DataFrame | None:
    """steps.csv with an ``x`` column: the iteration itself, or interpolated between the epoch ends."""
    if not path.is_file():
        return None
    steps = pd.read_csv(path)
    if x == "iterations":
        return steps.assign(iterations=steps["iteration"])
    if "iterations" not in metrics:
        return None
    ends = np.concatenate([[0], metrics["iterations"].to_numpy(float)])
    values = np.concatenate([[0], metrics[x].to_numpy(float)])
    return steps.assign(**{x: np.interp(steps["iteration"].to_numpy(float), ends, values)})
