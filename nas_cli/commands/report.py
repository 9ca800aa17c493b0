"""``nas-cli report PATH``: every job below PATH as one table, printed and written beside it."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
from rich import get_console
from rich.table import Table

from nas_cli.errors import UserError
from nas_cli.report.collect import collect
from nas_cli.report.plots import X_AXES, learning_curves, plot_path
from nas_cli.report.tables import long_table, needs_run, one_key_table, pivot_table, varying
from nas_cli.runs.record import atomic_write


def main(path: Path, rows: str | None = None, cols: str | None = None, value: str = "val_acc",
         plot: bool = False, group: bool = True, x: list[str] | None = None) -> pd.DataFrame:
    """The table (printed, report.md, report.csv); ``plot`` (or any ``x``): learning curves against each
    x axis in ``x`` (default epoch), curves.png / curves_<x>.png with their numbers as CSV."""
    axes = x_axes(x)
    frame, keys, headline = collect(path)
    out_dir = Path(path) if Path(path).is_dir() else Path(path).parent
    if rows and cols:
        table, title = pivot_table(frame, keys, rows, cols, value), f"{value}: {rows} x {cols}"
    elif rows or cols:
        table, title = one_key_table(frame, keys, rows or cols, value, across=not rows), f"{value} by {rows or cols}"
    else:
        table, title = long_table(frame, keys, headline, group=group), f"{len(frame)} jobs under {path}"
    note = caption(frame)
    parts = by_command(table)
    markdown = "\n\n".join((f"### {name}\n\n" if len(parts) > 1 else "") + to_markdown(part)
                           for name, part in parts) + (f"\n\n{note}" if note else "")
    atomic_write(out_dir / "report.csv", lambda tmp: table.to_csv(tmp, index=False))
    atomic_write(out_dir / "report.md", lambda tmp: Path(tmp).write_text(markdown + "\n"))
    console = get_console()
    for i, (name, part) in enumerate(parts):
        console.print(to_rich(part, f"{title}: {name}" if len(parts) > 1 else title,
                              caption=note if i == len(parts) - 1 else ""))
    written = [out_dir / "report.md", out_dir / "report.csv"]
    if plot or x:
        shown = varying(frame, keys)
        shown += ["job"] if needs_run(frame, shown) else []  # same overrides: the folder tells curves apart
        labels = [", ".join(f"{k}={job[k]}" for k in shown) for _, job in frame.iterrows()]
        for axis in axes:
            png = learning_curves(frame, labels, plot_path(out_dir, axis), x=axis)
            written += [png, png.with_suffix(".csv")] if png else []
    console.print("wrote " + ", ".join(str(p) for p in written), highlight=False)
    return table


def by_command(table: pd.DataFrame) -> list[tuple[str, pd.DataFrame]]:
    """A table of several commands' runs as one table per command, each with only the columns its runs fill
    (runs of train and of dqn share few keys and figures: side by side they are mostly dashes). report.csv
    keeps the whole table."""
    if "Command" not in table:
        return [("", table)]
    parts = []
    for name, part in table.groupby("Command", sort=False):
        filled = [c for c in part.columns if c != "Command" and (part[c].astype(str) != "-").any()]
        parts.append((str(name), part[filled].reset_index(drop=True)))
    return parts


def x_axes(x: list[str] | None) -> list[str]:
    """The x axes asked for (``--x`` repeated or comma-separated), in order, each once; none: epoch."""
    axes = [a.strip() for item in (x or ["epoch"]) for a in item.split(",") if a.strip()] or ["epoch"]
    bad = [a for a in axes if a not in X_AXES]
    if bad:
        raise UserError(f"--x {bad[0]} is not one of {', '.join(X_AXES)}")
    return list(dict.fromkeys(axes))


def caption(frame: pd.DataFrame) -> str:
    """What the table's figures cost, which epochs they average and what val_* was measured on."""
    return " · ".join(part for part in (_cost(frame), _averaged(frame), _validation(frame)) if part)


def _validation(frame: pd.DataFrame) -> str:
    """Which data the val_* columns are (held out from train, or the test set); test_* is always the test set."""
    splits = sorted(set(frame["val_split"].dropna())) if "val_split" in frame else []
    if not splits:
        return ""
    text = "val_*: " + " | ".join(splits)
    return text + ("; test_*: the test set, once after training" if "test_acc" in frame else "")


def _cost(frame: pd.DataFrame) -> str:
    if "device_hours" not in frame:
        return ""
    gpu = frame["gpu_hours"].sum() if "gpu_hours" in frame else 0.0
    text = f"total {frame['device_hours'].sum():.4f} device-hours"
    return text + (f" ({gpu:.4f} GPU-hours)" if gpu else "")


def _averaged(frame: pd.DataFrame) -> str:
    """The summaries' ``averaged_epochs`` [first, last], where they say: one span for all, or a pointer."""
    spans = set(frame["averaged_epochs"].dropna()) if "averaged_epochs" in frame else set()
    if len(spans) > 1:
        if all(first == last for first, last in spans):
            return "figures: each run's final epoch"
        return "figures: means over each run's last epochs (see summary.json averaged_epochs)"
    if not spans:
        return ""
    first, last = spans.pop()
    return f"figures: epoch {last}" if first == last else f"figures: mean of epochs {first}-{last}"


def to_markdown(table: pd.DataFrame) -> str:
    header = "| " + " | ".join(map(str, table.columns)) + " |"
    rule = "|" + "|".join("---" for _ in table.columns) + "|"
    body = ["| " + " | ".join(str(v) for v in row) + " |" for row in table.itertuples(index=False)]
    return "\n".join([header, rule, *body])


def to_rich(table: pd.DataFrame, title: str, caption: str = "") -> Table:
    out = Table(title=title, caption=caption or None)
    for col in table.columns:
        out.add_column(str(col), justify="left" if table[col].dtype == object else "right")
    for row in table.itertuples(index=False):
        out.add_row(*(str(v) for v in row))
    return out
