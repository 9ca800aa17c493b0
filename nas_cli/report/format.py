"""How a report reads: one table per command, its caption, and the same table as Markdown or rich.

The one place tables become text (``report.md``, the terminal, grad-bench's ``best.md``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import pandas as pd
from rich.console import JustifyMethod
from rich.table import Table


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
    """A Markdown table of ``table``'s cells as they print."""
    header = "| " + " | ".join(map(str, table.columns)) + " |"
    rule = "|" + "|".join("---" for _ in table.columns) + "|"
    body = ["| " + " | ".join(str(v) for v in row) + " |" for row in table.itertuples(index=False)]
    return "\n".join([header, rule, *body])


def to_rich(
    table: pd.DataFrame,
    title: str,
    caption: str = "",
    styles: Sequence[str | None] | None = None,
    justify: Mapping[str, JustifyMethod] | None = None,
) -> Table:
    """A rich table of ``table``: text columns to the left, numbers to the right, unless ``justify`` names a
    column's side (cells already formatted as text can still read as numbers); ``styles``: one rich style per
    row (None: plain)."""
    out = Table(title=title, caption=caption or None)
    sides = dict(justify or {})
    for col in table.columns:
        out.add_column(str(col), justify=sides.get(str(col), "left" if table[col].dtype == object else "right"))
    for i, row in enumerate(table.itertuples(index=False)):
        out.add_row(*(str(v) for v in row), style=styles[i] if styles is not None else None)
    return out
