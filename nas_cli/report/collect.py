"""Find every job below a folder and load its overrides and summary into one frame."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import yaml

from nas_cli.errors import UserError
from nas_cli.runs.files import METRICS, OVERRIDES, SUMMARY
from nas_cli.runs.record import read_summary

NOT_SHOWN = ("resume", "progress")  # how a run was started or drawn, never what it computed

HEADLINE = ["train_loss", "train_acc", "val_acc"]  # runs from before summaries named their own ``headline``


def job_dirs(root: Path) -> list[Path]:
    """Folders holding a run record: a summary.json, or the metrics.csv of a job whose summary is lost (it
    died mid-run, before summaries said ``running`` from the start).

    Hydra's job files alone (``.hydra/``, a log) are no run: what a refused or never-started job leaves
    behind, ignored. A record inside another job's folder (an ensemble member) belongs to that job.
    """
    found = {p.parent for p in root.rglob(SUMMARY)} | {
        p.parent.parent for p in root.rglob(str(OVERRIDES)) if (p.parent.parent / METRICS).is_file()
    }
    jobs = [d for d in found if not any(parent in found for parent in d.parents)]
    return sorted(jobs, key=lambda d: [_natural(part) for part in d.relative_to(root).parts])


def _natural(text: str):
    return (0, int(text), "") if text.isdigit() else (1, 0, text)


def read_overrides(job: Path) -> dict[str, str]:
    path = job / OVERRIDES
    if not path.is_file():
        return {}
    items = yaml.safe_load(path.read_text()) or []
    pairs = (item.split("=", 1) for item in items if "=" in item)
    return {k.lstrip("+~"): v for k, v in pairs if k.lstrip("+~") not in NOT_SHOWN}


def last_row(path: Path) -> dict:
    """The last row of a metrics.csv (``{}`` when absent or empty: a job can die before its first row)."""
    try:
        rows = pd.read_csv(path)
    except (FileNotFoundError, pd.errors.EmptyDataError):
        return {}
    return rows.tail(1).to_dict("records")[0] if len(rows) else {}


def collect(path: str | Path) -> tuple[pd.DataFrame, list[str], list[str]]:
    """One row per job: ``job`` (relative folder), its override keys, then every summary figure.

    Override values stay as typed (``1e-4``, not ``0.0001``); tables sort them numerically.
    A job that did not finish (status not ok, or no summary) gets the headline figures its summary
    lacks from the last row of its metrics.csv, so an interrupted run still shows how far it got.

    Returns the frame, the override keys (in first-seen order) and the headline figures: the union of the
    jobs' ``headline`` lists in first-seen order (``HEADLINE`` for summaries without one).
    """
    root = Path(path)
    if not root.exists():
        raise UserError(f"no such folder: {root}")
    if root.is_file():
        root = root.parent
    jobs = job_dirs(root)
    if not jobs:
        raise UserError(
            f"no runs under {root}: expected folders with {SUMMARY} (a folder with only {OVERRIDES.parent}/ "
            "holds a job that never started)"
        )
    rows, keys, headline = [], [], []
    for job in jobs:
        overrides = read_overrides(job)
        keys += [k for k in overrides if k not in keys]
        summary = read_summary(job)
        if summary is not None:  # a job without one says nothing about which figures matter
            headline += [k for k in summary.get("headline", HEADLINE) if k not in headline]
        summary = summary or {"status": "failed", "error": f"no {SUMMARY} (the job died mid-run)"}
        flat = {k: v for k, v in summary.items() if not isinstance(v, (dict, list))}
        if summary.get("averaged_epochs"):  # [first, last] (null before the first epoch): hashable, for the caption
            flat["averaged_epochs"] = tuple(summary["averaged_epochs"])
        # overrides last: the summary's ``seed`` (an int) must not split a key typed as "0" from its twins
        rows.append(
            {
                "job": str(job.relative_to(root)) if job != root else root.resolve().name,
                **flat,
                **overrides,
                "_metrics": str(job / METRICS),
            }
        )
    headline = headline or HEADLINE
    for row in rows:
        if row.get("status") != "ok":
            last = last_row(Path(row["_metrics"]))
            row.update({k: last[k] for k in headline if row.get(k) is None and k in last})
    return _frame(rows), keys, headline


def _frame(rows: list[dict]) -> pd.DataFrame:
    """The rows as a frame, keeping integer figures integers where some jobs lack them (not 50.0)."""
    frame = pd.DataFrame(rows)
    for col in frame.columns:
        values = [row[col] for row in rows if row.get(col) is not None]
        if values and all(isinstance(v, int) and not isinstance(v, bool) for v in values):
            frame[col] = frame[col].astype("Int64")
    return frame
