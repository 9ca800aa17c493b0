"""The run record's two tables: ``metrics.csv`` (rows) and ``summary.json`` (the final figures).

Both are rewritten whole and atomically (temporary name, then rename): a crash never leaves a
half-written table. ``nas_cli.runs.lifecycle.Run`` decides what goes into the summary and when.
"""

from __future__ import annotations

import json
import math
import os
import platform
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import Any

from nas_cli.runs.files import METRICS, SUMMARY


def atomic_write(path: Path, write) -> None:
    """Call ``write(tmp_path)`` then rename over ``path``: readers see old or new, never half.

    The file gets the mode ``open(path, "w")`` would give it (0666 less the umask), so that a run folder in a
    shared project folder is readable to whom the umask allows.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _new_temporary(path)
    try:
        write(str(tmp))  # a str, as the writers have always been given
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _new_temporary(path: Path) -> Path:
    """An empty, new file beside ``path``: created by ``os.open`` with 0666, so that the kernel applies the
    umask (and a folder's default ACL) as for any file; ``tempfile.mkstemp`` would make it 0600."""
    for _ in range(100):
        tmp = path.parent / f".{path.name}.{secrets.token_hex(4)}.tmp"
        try:
            os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
            return tmp
        except FileExistsError:  # another writer's temporary file: pick another name
            continue
    raise FileExistsError(f"no free temporary name beside {path}")


def write_json(path: Path, data: Any) -> None:
    text = json.dumps(data, indent=2)
    atomic_write(path, lambda tmp: Path(tmp).write_text(text + "\n"))


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
        # called with the rows after each write of the table (the run's tracker)
        self.on_write: Callable[[list[dict]], None] | None = None

    def log(self, row: dict, write: bool = True) -> None:
        """Add a row; ``write=False`` keeps it in memory until the next write (for loops that log often)."""
        self.rows.append(dict(row))
        if write:
            self.write_metrics()

    def write_metrics(self) -> None:
        if not self.write:
            return
        import pandas as pd  # here: the command line reads summaries before it needs tables

        frame = pd.DataFrame(self.rows)
        atomic_write(self.dir / METRICS, lambda tmp: frame.to_csv(tmp, index=False))
        if self.on_write is not None:
            self.on_write(self.rows)

    def write_summary(self, summary: dict) -> None:
        if self.write:
            write_json(self.dir / SUMMARY, {k: _finite_or_none(v) for k, v in summary.items()})

    def last_n_means(self, keys: list[str], n: int) -> dict[str, float]:
        """Mean of each key over the last ``n`` rows (the figure sweep tables report)."""
        import pandas as pd

        tail = pd.DataFrame(self.rows[-n:]) if self.rows else pd.DataFrame()
        return {k: float(tail[k].mean()) for k in keys if k in tail}


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
    """A run's summary, or None when it has none (or an unreadable one: a run killed mid-write of an
    older version, say)."""
    path = Path(run_dir) / SUMMARY
    try:
        return json.loads(path.read_text()) if path.is_file() else None
    except json.JSONDecodeError:
        return None
