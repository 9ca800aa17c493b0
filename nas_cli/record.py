"""The run record every command writes: ``metrics.csv`` and ``summary.json``.

``report`` reads only these files (plus Hydra's ``.hydra/``), so any command's
runs become one table. Both files are rewritten whole and atomically (temporary
name, then rename): a crash never leaves a half-written table.
"""

from __future__ import annotations

import json
import math
import os
import platform
import tempfile
from pathlib import Path
from typing import Any

import pandas as pd

METRICS = "metrics.csv"
SUMMARY = "summary.json"


def atomic_write(path: Path, write) -> None:
    """Call ``write(tmp_path)`` then rename over ``path``: readers see old or new, never half."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _finite_or_none(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None if math.isnan(value) else str(value)
    return value


def versions() -> dict[str, str]:
    import torch

    from nas_cli import __version__

    return {"nas_cli": __version__, "torch": torch.__version__, "python": platform.python_version()}


class RunRecord:
    """Rows of per-epoch (or per-step) metrics plus a final summary, kept in a run folder."""

    def __init__(self, run_dir: str | Path, rows: list[dict] | None = None, write: bool = True):
        self.dir = Path(run_dir)
        self.rows: list[dict] = list(rows or [])
        self.write = write  # False on every process but rank 0 of a multi-process run

    def log(self, row: dict, write: bool = True) -> None:
        """Add a row; ``write=False`` keeps it in memory until the next write (for loops that log often)."""
        self.rows.append(dict(row))
        if write:
            self.write_metrics()

    def write_metrics(self) -> None:
        if not self.write:
            return
        frame = pd.DataFrame(self.rows)
        atomic_write(self.dir / METRICS, lambda tmp: frame.to_csv(tmp, index=False))

    def write_summary(self, summary: dict) -> None:
        if not self.write:
            return
        clean = {k: _finite_or_none(v) for k, v in summary.items()}
        text = json.dumps(clean, indent=2, sort_keys=False)
        atomic_write(self.dir / SUMMARY, lambda tmp: Path(tmp).write_text(text + "\n"))

    def last_n_means(self, keys: list[str], n: int) -> dict[str, float]:
        """Mean of each key over the last ``n`` rows (the figure sweep tables report)."""
        tail = pd.DataFrame(self.rows[-n:]) if self.rows else pd.DataFrame()
        return {k: float(tail[k].mean()) for k in keys if k in tail}


def run_cost(wall: float, device, seed) -> dict:
    """The summary fields every run records: wall time, device, device- and GPU-hours, seed, versions."""
    gpu = getattr(device, "type", str(device)) == "cuda"
    return {"wall_time_s": wall, "device": str(device), "device_hours": wall / 3600.0,
            "gpu_hours": wall / 3600.0 if gpu else 0.0, "seed": seed, "versions": versions()}


def read_json(source: str | Path, option: str, in_run_folder: str | None = None, what: str = "a JSON file") -> Any:
    """The JSON file a config option names, or the ``in_run_folder`` file of the run folder it names.

    A missing or unparsable file is a one-line ``UserError`` naming the option.
    """
    from nas_cli.errors import UserError

    path = Path(source)
    if in_run_folder and path.is_dir():
        path = path / in_run_folder
    if not path.is_file():
        raise UserError(f"{option}={source}: no such file ({what})")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as ex:
        raise UserError(f"{option}={source} is not JSON ({ex.msg})") from ex


def read_summary(run_dir: str | Path) -> dict | None:
    path = Path(run_dir) / SUMMARY
    if not path.is_file():
        return None
    return json.loads(path.read_text())
