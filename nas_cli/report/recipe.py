"""``nas-cli report``'s recipe: every job below a folder as one table (printed, ``report.md``, ``report.csv``),
pivoted by up to two keys, and learning curves on request."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
from rich import get_console

from nas_cli.errors import UserError
from nas_cli.report.collect import collect
from nas_cli.report.format import by_command, caption, to_markdown, to_rich
from nas_cli.report.plots import X_AXES, learning_curves, plot_path
from nas_cli.report.tables import long_table, needs_run, one_key_table, pivot_table, varying
from nas_cli.runs.record import atomic_write


def report(
    path: Path,
    rows: str | None = None,
    cols: str | None = None,
    value: str = "val_acc",
    plot: bool = False,
    group: bool = True,
    x: list[str] | None = None,
) -> pd.DataFrame:
    """The table (printed, report.md, report.csv); ``plot`` (or any ``x``): learning curves against each
    x axis in ``x`` (default epoch), curves.png / curves_<x>.png with their numbers as CSV."""
    axes = x_axes(x)
    frame, keys, headline = collect(path)
    out_dir = Path(path) if Path(path).is_dir() else Path(path).parent
    if rows and cols:
        table, title = pivot_table(frame, keys, rows, cols, value), f"{value}: {rows} x {cols}"
    elif by := rows or cols:
        table, title = one_key_table(frame, keys, by, value, across=not rows), f"{value} by {by}"
    else:
        table, title = long_table(frame, keys, headline, group=group), f"{len(frame)} jobs under {path}"
    note = caption(frame)
    parts = by_command(table)
    markdown = "\n\n".join(
        (f"### {name}\n\n" if len(parts) > 1 else "") + to_markdown(part) for name, part in parts
    ) + (f"\n\n{note}" if note else "")
    atomic_write(out_dir / "report.csv", lambda tmp: table.to_csv(tmp, index=False))
    atomic_write(out_dir / "report.md", lambda tmp: Path(tmp).write_text(markdown + "\n"))
    console = get_console()
    for i, (name, part) in enumerate(parts):
        console.print(
            to_rich(part, f"{title}: {name}" if len(parts) > 1 else title, caption=note if i == len(parts) - 1 else "")
        )
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


def x_axes(x: list[str] | None) -> list[str]:
    """The x axes asked for (``--x`` repeated or comma-separated), in order, each once; none: epoch."""
    axes = [a.strip() for item in (x or ["epoch"]) for a in item.split(",") if a.strip()] or ["epoch"]
    bad = [a for a in axes if a not in X_AXES]
    if bad:
        raise UserError(f"--x {bad[0]} is not one of {', '.join(X_AXES)}")
    return list(dict.fromkeys(axes))
