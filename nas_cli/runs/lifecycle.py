"""One lifecycle for every run of every command: ``summary.json`` from ``running`` to its end.

A run's summary says ``running`` as soon as it starts (so a run killed with SIGKILL shows as
running, not missing), and at the end ``ok | diverged | failed | interrupted`` with the
error, the command's figures, wall time summed over resumes, device and device-hours, seed
and versions. It is written atomically, in a ``finally``, whatever ends the run::

    run = Run(run_dir, "dqn", seed=0, device=device, resume=True, budget={"total_steps": 100_000})
    if (done := run.finished()) is not None:
        return done                        # resumed, but nothing is left to do
    state = run.load_checkpoint()          # before the run starts: a bad file changes nothing
    with run:                              # summary.json: running
        run.figures = lambda: {...}        # read at the end, however the run ends
        for ...:
            run.stop_point(save)           # on SIGINT/SIGTERM: save(), then Interrupted
    return run.summary

Runs nest (ensemble members, search-rl children): the outermost one owns the signal handlers.
A ``tracker`` (``logger=``, ``nas_cli.runs.tracking``) follows the run: it starts with it, gets each
written ``metrics.csv``'s new rows, and ends with the summary and the status.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal

import torch

from nas_cli.runs import checkpoint, folders, signals
from nas_cli.runs.files import CHECKPOINT
from nas_cli.runs.record import RunRecord, read_summary, versions
from nas_cli.runs.tracking import Tracker

log = logging.getLogger(__name__)
RESERVED = ("status", "command", "error")  # the lifecycle's to write, never a command's figure
_open = 0  # runs entered and not yet left in this process (nested runs: ensemble members, children)


class Run:
    """The lifecycle of one run in ``run_dir``.

    Args:
        run_dir: the run folder.
        command: the command's name (``train``, ``search-darts``, ...), recorded in the summary.
        seed: the run's seed.  device: where it computes.
        resume: continue the run in ``run_dir`` (its checkpoint, its wall time so far).
        budget: the override keys that size the run and their values (``{"trainer.epochs": 8}``):
            a finished run is resumed only when asked for more.
        headline: the summary keys that ``report`` shows first for this command.
        write: False on every process but rank 0 of a multi-process run.
        tracker: where the record goes besides the folder (``logger=``); None: nowhere.
    """

    def __init__(
        self,
        run_dir: str | Path,
        command: str,
        *,
        seed: int | None,
        device: torch.device | str,
        resume: bool = False,
        budget: dict | None = None,
        headline: list[str] | None = None,
        write: bool = True,
        tracker: Tracker | None = None,
    ):
        self.dir = Path(run_dir)
        self.command, self.seed, self.device = command, seed, torch.device(device)
        self.resume, self.budget, self.headline = bool(resume), dict(budget or {}), list(headline or [])
        self.record = RunRecord(self.dir, write=write)
        self.tracker = tracker if tracker is not None and write else Tracker()
        self.record.on_write = self.tracker.rows
        self.previous = read_summary(self.dir) if self.resume else None
        self.status = "ok"  # what the run ends as if nothing goes wrong (a command may set "diverged")
        self.figures: Callable[[], dict] | None = None
        self.summary: dict | None = None
        self._started: float | None = None
        self._started_at: str | None = None  # when this run first started (kept over resumes)

    # -- before the run starts --------------------------------------------------------------
    def finished(self) -> dict | None:
        """When resuming a run that already finished and is not asked for more: its summary."""
        prev = self.previous
        if not prev or prev.get("status") != "ok":
            return None
        before = prev.get("budget") or {}
        if any(key not in before or value > before[key] for key, value in self.budget.items()):
            return None
        more = " or ".join(f"{k}=N (more than {v})" for k, v in self.budget.items())
        log.info(f"{self.dir} already finished" + (f"; add {more} to extend it" if more else ""))
        return prev

    def load_checkpoint(self, map_location="cpu") -> dict | None:
        """The run's checkpoint when resuming (None when starting afresh); a bad file is a UserError."""
        if not self.resume:
            return None
        path = self.dir / CHECKPOINT
        if not path.is_file():
            log.info(f"resume: no checkpoint in {self.dir}, starting from the beginning")
            return None
        saved = checkpoint.load(path, map_location=map_location)
        if "history" in saved:  # the rows up to the checkpoint: rows written after it are dropped at the next write
            self.record.rows = list(saved["history"])
        return saved

    # -- while it runs ----------------------------------------------------------------------
    @property
    def wall_time(self) -> float:
        """Seconds this run has computed, over every start and resume."""
        before = float((self.previous or {}).get("wall_time_s") or 0.0)
        return before + (time.perf_counter() - self._started if self._started is not None else 0.0)

    def save_checkpoint(self, state: dict) -> None:
        """Write ``checkpoints/last.pt`` atomically, with the metrics rows so far (``load_checkpoint`` puts them
        back), and refresh the running summary's wall time."""
        if self.record.write:
            checkpoint.save(self.dir / CHECKPOINT, {**state, "history": self.record.rows})
            self._write("running")

    def stop_point(self, save: Callable[[], None] | None = None) -> None:
        """A safe point: if SIGINT/SIGTERM asked to stop, ``save()`` the state and raise ``Interrupted``."""
        signum = signals.requested()
        if signum is None:
            return
        if save is not None:
            save()
        raise signals.stopped(signum)

    def __enter__(self) -> Run:
        self.tracker.start(resume=self.resume, seed=self.seed, command=self.command)  # may refuse: nothing written
        global _open
        self._signals = signals.handled()
        self._signals.__enter__()
        self._started = time.perf_counter()
        self._started_at = datetime.now(timezone.utc).isoformat(timespec="seconds")
        folders.mark_started(self.dir)
        _open += 1
        self._write("running")
        return self

    def __exit__(self, kind, ex, tb) -> Literal[False]:
        global _open
        _open -= 1
        error = None
        stopped = isinstance(ex, KeyboardInterrupt)
        if ex is None:
            status = self.status
        elif stopped:
            status = "interrupted"
            error = str(ex) or "stopped by SIGINT"
            if isinstance(ex, signals.Interrupted) and ex.run_dir is None:
                ex.run_dir = self.dir  # the outermost run's folder is the one to resume
        else:
            status, error = "failed", f"{type(ex).__name__}: {ex}"
        try:
            with signals.finishing(stopped):  # however many signals arrive now, the record gets written
                self._write(status, error)
                assert self.summary is not None  # _write has just set it
                self.tracker.finish(self.summary, self.record.rows, status)
        finally:
            self._signals.__exit__(kind, ex, tb)
        if stopped and _open == 0 and signals.in_sweep_worker():
            signum = getattr(ex, "signum", 2)
            raise signals.JobStopped(signum, str(self.dir)) from ex  # the launcher lets the other jobs finish
        return False

    # -- the summary ------------------------------------------------------------------------
    def _figures(self, status: str) -> dict:
        if self.figures is None:
            return {}
        try:
            return dict(self.figures())
        except Exception as ex:  # a crash can leave the state half-built: keep the record, lose the figures
            if status != "running":
                log.warning(f"could not compute the summary's figures ({type(ex).__name__}: {ex})")
            return {}

    def _write(self, status: str, error: str | None = None) -> None:
        wall = self.wall_time
        gpu = self.device.type == "cuda"
        prev = self.previous or {}
        summary: dict[str, Any] = {"status": status, "command": self.command}
        if error:
            summary["error"] = error
        summary.update({k: v for k, v in self._figures(status).items() if k not in RESERVED})
        summary.update(
            {
                "headline": self.headline,
                "budget": self.budget,
                "wall_time_s": wall,
                "device": str(self.device),
                "device_hours": wall / 3600.0,
                "gpu_hours": wall / 3600.0 if gpu else 0.0,
                "seed": self.seed,
                "resumes": int(prev.get("resumes", -1)) + 1 if prev else 0,
                "started": prev.get("started") or self._started_at,
                "host": socket.gethostname(),
                "pid": os.getpid(),  # a resume leaves a live run alone
                "versions": versions(),
            }
        )
        self.summary = summary
        self.record.write_summary(summary)
