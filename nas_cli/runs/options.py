"""The keys every command's config has, with one meaning: ``seed``, ``device``, ``threads``,
``progress``, ``resume``. Each command reads them here, once, and passes values on."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from nas_cli.errors import UserError
from nas_cli.runs import folders, signals  # noqa: F401  (signals: a sweep worker keeps stop requests from import on)
from nas_cli.runs.rank import launched_rank

if TYPE_CHECKING:
    import torch

_OFF = {"false", "0", "no", "off", "null", "none"}


def is_off(resume) -> bool:
    """``resume`` as given on the command line or in a config: off (false, no, off, null, ...) or not."""
    return resume is None or resume is False or str(resume).lower() in _OFF


def requeued() -> bool:
    """A SLURM job started again after preemption or a time limit (submitit's requeue): it continues
    the run in its folder, whatever ``resume`` says."""
    return int(os.environ.get("SLURM_RESTART_COUNT", "0") or 0) > 0


def resolve_device(name: str = "auto") -> torch.device:
    """The ``device`` key: ``auto`` picks CUDA, then MPS, then CPU; an explicit device must exist."""
    import torch  # here: the command line reads the shared keys before it loads torch

    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"device={name} asked for, but no CUDA GPU is visible; use device=auto or device=cpu")
    if name == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise UserError("device=mps asked for, but MPS is not available; use device=auto or device=cpu")
    if name not in ("cpu", "mps") and not name.startswith("cuda"):
        raise UserError(f"unknown device '{name}': use auto, cpu, cuda, cuda:N or mps")
    return torch.device(name)


@dataclass(frozen=True)
class RunOptions:
    run_dir: Path
    seed: int
    device: torch.device
    threads: int | None  # torch's CPU threads; None: torch's default
    progress: bool
    resume: bool  # the bridge has turned resume=PATH into this run folder
    logger: dict[str, Any] | None = None  # the ``logger`` group's node (tracker); None: the run record alone
    tracking: Any = None  # the tracker's ``nas_cli.runs.tracking.Context`` (config, overrides, names)

    @classmethod
    def from_config(cls, cfg) -> RunOptions:
        """Check the shared keys, apply ``threads``, resolve the device; the run folder is Hydra's."""
        from hydra.core.hydra_config import HydraConfig

        seed, threads, progress = cfg.seed, cfg.threads, cfg.progress
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise UserError(f"seed={seed}: expected a whole number")
        if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
            raise UserError(f"threads={threads}: expected a positive whole number, or null for torch's default")
        if not isinstance(progress, bool):
            raise UserError(f"progress={progress}: expected true or false")
        if threads is not None:
            import torch

            torch.set_num_threads(threads)
        run_dir = Path(HydraConfig.get().runtime.output_dir)
        resume = not is_off(cfg.resume) or requeued()
        if launched_rank() == 0:  # torchrun's other ranks write nothing of their own
            folders.claim(run_dir, resume=resume)  # the command line holds it already; a sweep's job takes it here
        logger, context = _logger(cfg, run_dir)
        return cls(run_dir, seed, resolve_device(str(cfg.device)), threads, progress, resume, logger, context)

    def run(
        self,
        command: str,
        *,
        budget: dict | None = None,
        headline: list[str] | None = None,
        run_dir: str | Path | None = None,
        seed: int | None = None,
        device: torch.device | str | None = None,
        write: bool = True,
    ):
        """The command's run with these options (another folder, seed or device for an ensemble member)."""
        from nas_cli.runs import tracking
        from nas_cli.runs.lifecycle import Run

        run_dir = Path(run_dir or self.run_dir)
        tracker = tracking.make(self.logger, run_dir, self.tracking) if write else None
        return Run(
            run_dir,
            command,
            seed=self.seed if seed is None else seed,
            device=device or self.device,
            resume=self.resume,
            budget=budget,
            headline=headline,
            write=write,
            tracker=tracker,
        )


def _logger(cfg, run_dir: Path) -> tuple[dict | None, Any]:
    """The ``logger`` node as a plain dict and the tracker's context; a tracker that cannot run fails here."""
    from nas_cli.config_values import as_dict
    from nas_cli.runs import tracking

    tracking.upload_late_artifacts()  # the previous job's (a multirun's jobs share this process)
    node = cfg.get("logger")
    if node is None:
        return None, None
    logger = as_dict(node)
    tracking.check(logger)
    return logger, tracking.context_from_config(cfg, run_dir)
