"""Where a run's figures go besides the run record (``logger=``).

The run record (``metrics.csv``, ``summary.json``) is always written: ``report`` reads it.
A logger receives the same rows and the final summary.
"""

from __future__ import annotations

import math
from pathlib import Path


class CSVLogger:
    """``logger=csv``: the run record alone (nothing more to write)."""

    def __init__(self, run_dir: str | Path | None = None, hparams: dict | None = None):
        pass

    def log(self, row: dict, step: int) -> None:
        pass

    def finish(self, summary: dict) -> None:
        pass


class TensorBoardLogger(CSVLogger):
    """``logger=tensorboard``: every numeric column as a scalar per step, and the run's overrides as
    hyper-parameters beside its final figures (TensorBoard's HPARAMS tab compares a sweep's jobs)."""

    def __init__(self, run_dir: str | Path, hparams: dict | None = None, log_dir: str = "tensorboard"):
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(Path(run_dir) / log_dir))
        self.hparams = {k: v if isinstance(v, (int, float, str, bool)) else str(v) for k, v in (hparams or {}).items()}

    def log(self, row: dict, step: int) -> None:
        for key, value in row.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
                self.writer.add_scalar(key, value, step)

    def finish(self, summary: dict) -> None:
        figures = {f"final/{k}": v for k, v in summary.items()
                   if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)}
        self.writer.add_hparams(self.hparams or {"run": "default"}, figures, run_name=".")
        self.writer.close()
