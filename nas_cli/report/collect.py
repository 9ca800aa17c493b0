"""Find every job below a folder and load its overrides and summary into one frame."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import yaml

from nas_cli.errors import UserError
from nas_cli.record import METRICS, SUMMARY, read_summary

OVERRIDES = Path(".hydra") / "overrides.yaml"


def job_dirs(root: Path) -> list[Path]:
    """Folders holding a run record or Hydra's job files (a job that died early has only the latter).

    A record inside another job's folder (an ensemble member) belongs to that job, not to the table.
    """
    found = {p.parent for p in root.rglob(SUMMARY)} | {p.parent.parent for p in root.rglob(str(OVERRIDES))}
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
    return {k.lstrip("+~"): v for k, v in pairs if k.lstrip("+~") not in ("resume",)}


def collect(path: str | Path) -> tuple[pd.DataFrame, list[str]]:
    """One row per job: ``job`` (relative folder), its override keys, then every summary figure.

    Override values stay as typed (``1e-4``, not ``0.0001``); tables sort them numerically.

    Returns the frame and the override keys (in first-seen order).
    """
    root = Path(path)
    if not root.exists():
        raise UserError(f"no such folder: {root}")
    if root.is_file():
        root = root.parent
    jobs = job_dirs(root)
    if not jobs:
        raise UserError(f"no runs under {root}: expected folders with {SUMMARY} or {OVERRIDES}")
    rows, keys = [], []
    for job in jobs:
        overrides = read_overrides(job)
        keys += [k for k in overrides if k not in keys]
        summary = read_summary(job) or {"status": "failed", "error": f"no {SUMMARY} (the job died before it ran)"}
        flat = {k: v for k, v in summary.items() if not isinstance(v, (dict, list))}
        rows.append({"job": str(job.relative_to(root)) if job != root else ".",
                     **overrides, **flat,
                     "_metrics": str(job / METRICS)})
    return pd.DataFrame(rows), keys
