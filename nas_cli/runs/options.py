"""The keys every command's config has, with one meaning: ``seed``, ``device``, ``threads``,
``progress``, ``resume``. Each command reads them here, once, and passes values on."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch

from nas_cli.errors import UserError

_OFF = {"false", "0", "no", "off", "null", "none"}


def is_off(resume) -> bool:
    """``resume`` as given on the command line or in a config: off (false, no, off, null, ...) or not."""
    return resume is None or resume is False or str(resume).lower() in _OFF


def requeued() -> bool:
    """A SLURM job started again after preemption or a time limit (submitit's requeue): it continues
    the run in its folder, whatever ``resume`` says."""
    return int(os.environ.get("SLURM_RESTART_COUNT", "0") or 0) > 0


@dataclass(frozen=True)
class RunOptions:
    run_dir: Path
    seed: int
    device: torch.device
    threads: int | None  # torch's CPU threads; None: torch's default
    progress: bool
    resume: bool  # the bridge has turned resume=PATH into this run folder

    @classmethod
    def from_config(cls, cfg) -> RunOptions:
        """Check the shared keys, apply ``threads``, resolve the device; the run folder is Hydra's."""
        from hydra.core.hydra_config import HydraConfig

        from nas_cli.engine.device import resolve_device

        seed, threads, progress = cfg.seed, cfg.threads, cfg.progress
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise UserError(f"seed={seed}: expected a whole number")
        if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
            raise UserError(f"threads={threads}: expected a positive whole number, or null for torch's default")
        if not isinstance(progress, bool):
            raise UserError(f"progress={progress}: expected true or false")
        if threads is not None:
            torch.set_num_threads(threads)
        return cls(Path(HydraConfig.get().runtime.output_dir), seed, resolve_device(str(cfg.device)), threads,
                   progress, not is_off(cfg.resume) or requeued())

    def run(self, command: str, *, budget: dict | None = None, headline: list[str] | None = None,
            run_dir: str | Path | None = None, seed: int | None = None, device: torch.device | str | None = None,
            write: bool = True):
        """The command's run with these options (another folder, seed or device for an ensemble member)."""
        from nas_cli.runs.lifecycle import Run

        return Run(run_dir or self.run_dir, command, seed=self.seed if seed is None else seed,
                   device=device or self.device, resume=self.resume, budget=budget, headline=headline, write=write)
