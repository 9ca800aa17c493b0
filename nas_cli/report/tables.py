"""Report tables: long form (a row per job or seed group), pivots and one-key tables, as frames ready to print."""

from __future__ import annotations

import pandas as pd

from nas_cli.errors import UserError

NAMES = {
    "train_loss": "Training Loss",
    "train_acc": "Training Accuracy",
    "val_acc": "Validation Accuracy",
    "test_acc": "Test Accuracy",
    "test_loss": "Test Loss",
    "ensemble_test_acc": "Ensemble Test Accuracy",
    "val_map50_nms": "Val mAP@0.5 NMS",
    "val_map_nms": "Val mAP@[.5:.95] NMS",
    "val_map50_softnms": "Val mAP@0.5 Soft-NMS",
    "val_map_softnms": "Val mAP@[.5:.95] Soft-NMS",
}
SEED = "seed"
RUN = "Run"


def varying(frame: pd.DataFrame, keys: list[str]) -> list[str]:
    """Override keys whose value differs between jobs (all keys when there is one job)."""
    if len(frame) <= 1:
        return [k for k in keys if k in frame]
    return [k for k in keys if frame[k].astype(str).nunique(dropna=False) > 1]


def needs_run(frame: pd.DataFrame, shown: list[str]) -> bool:
    """Whether the shown override values leave some job unnamed (no overrides, or a re-run with the same)."""
    return not shown or bool(frame[shown].astype(str).duplicated().any())


def pretty(keys: list[str]) -> dict[str, str]:
    """``model.width`` -> ``Width``; the full key where two last parts would clash."""
    last = [k.split(".")[-1] for k in keys]
    return {k: (p.replace("_", " ").title() if last.count(p) == 1 else k) for k, p in zip(keys, last)}


def metric_name(metric: str) -> str:
    """``val_acc`` -> ``Validation Accuracy``; ``best_eval_return`` -> ``Best Eval Return``."""
    return NAMES.get(metric) or metric.replace("_", " ").title()


def fmt(metric: str, value) -> str:
    if value is None or value is pd.NA or (isinstance(value, float) and pd.isna(value)):
        return "-"
    if isinstance(value, float):
        if value and abs(value) < 1e-3:  # a tiny figure (an output difference, say) keeps its digits
            return f"{value:.3g}"
        return f"{value:.5f}" if "loss" in metric else f"{value:.4f}"
    return str(value)


def _status(series: pd.Series) -> str:
    counts = series.fillna("failed").value_counts()
    if len(counts) == 1:
        return str(counts.index[0])
    return ", ".join(f"{status} {n}/{len(series)}" for status, n in counts.items())


def _mean_std(metric: str, values: pd.Series) -> str:
    """``mean ± std`` over the seeds that produced a number (one value: just the value)."""
    values = pd.to_numeric(values, errors="coerce").dropna()
    if len(values) == 0:
        return "-"
    if len(values) == 1:
        return fmt(metric, float(values.iloc[0]))
    return f"{fmt(metric, values.mean())} ± {fmt(metric, values.std(ddof=1))}"


def long_table(frame: pd.DataFrame, keys: list[str], metrics: list[str], group: bool = True) -> pd.DataFrame:
    """Rows: jobs (or seed groups, with mean ± std and n). Columns: varying keys (plus ``Run`` where they do
    not tell jobs apart), the ``metrics`` the jobs have, status."""
    shown = varying(frame, keys)
    metrics = [m for m in metrics if m in frame]
    if group and SEED in shown and len(frame) > 1:
        by = [k for k in shown if k != SEED]
        grouped = frame.groupby(by, dropna=False, sort=False) if by else [((), frame)]
        out = []
        for values, part in grouped:
            values = values if isinstance(values, tuple) else (values,)
            row = {pretty(by)[k]: v for k, v in zip(by, values)}
            for m in metrics:
                row[metric_name(m)] = _mean_std(m, part[m])
            row["n"] = len(part)
            row["Status"] = _status(part["status"])
            out.append(row)
        table = pd.DataFrame(out)
        names = [pretty(by)[k] for k in by]
    else:
        names = [pretty(shown)[k] for k in shown]
        table = pd.DataFrame({pretty(shown)[k]: frame[k].fillna("-") for k in shown}, index=frame.index)
        if needs_run(frame, shown):
            table.insert(0, RUN, frame["job"])
        if "command" in frame and frame["command"].nunique() > 1:  # runs of several commands side by side
            table.insert(0, "Command", frame["command"].fillna("-"))
        for m in metrics:
            table[metric_name(m)] = [fmt(m, v) for v in frame[m]]
        table["Status"] = frame["status"].fillna("failed").values
    if names:
        table = table.sort_values(names, kind="stable", key=_sort_key).reset_index(drop=True)
    if (table["Status"] == "ok").all():
        table = table.drop(columns="Status")
    return table


def _sort_key(column):
    """Numeric order where every value is a number (8 < 16, 1e-4 < 5e-4), text order otherwise."""
    column = pd.Series(column)
    numeric = pd.to_numeric(column, errors="coerce")
    return numeric if numeric.notna().all() else column.astype(str)


def _check(frame: pd.DataFrame, keys: list[str], wanted: list[str], value: str) -> None:
    """A one-line UserError, listing the choices, for an unknown key or a --value that is not a number."""
    for key in wanted:
        if key not in keys:
            raise UserError(f"'{key}' is not an override key of these runs; use one of: {', '.join(keys) or 'none'}")
    numeric = [c for c in frame.columns if c not in keys and pd.api.types.is_numeric_dtype(frame[c])]
    if value not in numeric:
        raise UserError(f"--value {value} is not a summary figure of these runs; use one of: {', '.join(numeric)}")


def pivot_table(frame: pd.DataFrame, keys: list[str], rows: str, cols: str, value: str) -> pd.DataFrame:
    """``rows`` x ``cols`` grid of ``value`` (mean over jobs sharing a cell, e.g. seeds)."""
    _check(frame, keys, [rows, cols], value)
    grid = frame.pivot_table(index=rows, columns=cols, values=value, aggfunc="mean", dropna=False)
    grid = grid.sort_index(axis=0, key=_sort_key).sort_index(axis=1, key=_sort_key)
    grid.index.name, grid.columns.name = pretty([rows])[rows], None
    return grid.map(lambda v: fmt(value, v)).reset_index().rename(columns=str)


def one_key_table(frame: pd.DataFrame, keys: list[str], key: str, value: str, across: bool = False) -> pd.DataFrame:
    """``value`` for each value of ``key``: the mean over the jobs sharing it, ``mean ± std`` with ``n`` where
    they differ by seed. A row per value of ``key``, or (``across``) one row with a column per value."""
    _check(frame, keys, [key], value)
    label, name = pretty([key])[key], metric_name(value)
    out, seeds = [], False
    for level, part in frame.groupby(key, dropna=False, sort=False):
        by_seed = SEED in part and part[SEED].astype(str).nunique() > 1
        seeds |= by_seed
        figure = _mean_std(value, part[value]) if by_seed else fmt(value, part[value].mean())
        out.append({label: level, name: figure, "n": len(part)})
    table = pd.DataFrame(out).sort_values(label, kind="stable", key=_sort_key).reset_index(drop=True)
    if not seeds:
        table = table.drop(columns="n")
    if across:  # the transposed shape: the header names the key, the one row the figure
        return pd.DataFrame([{label: name, **dict(zip(table[label].astype(str), table[name]))}])
    return table
