"""``resume=true`` / ``resume=PATH``: continue an interrupted run in its own folder.

Resolved before Hydra composes the config: the run folder becomes
``hydra.run.dir`` and the run's saved overrides are replayed (new ones win), so
the resumed run has the same config as the one that was interrupted.
"""

from __future__ import annotations

import logging
from pathlib import Path

import yaml

from nas_cli.errors import UserError
from nas_cli.record import read_summary

log = logging.getLogger(__name__)
CHECKPOINT = Path("checkpoints") / "last.pt"  # every command that resumes keeps its state here
_TRUE = {"true", "1", "yes", "on"}
_FALSE = {"false", "0", "no", "off", "null", "none"}


def is_off(resume) -> bool:
    """``resume`` as given on the command line or in the config: off (false, no, off, null, ...) or not."""
    return resume is None or resume is False or str(resume).lower() in _FALSE


def _key(override: str) -> str:
    return override.split("=", 1)[0].lstrip("+~")


def _run_folder(value: str, command: str) -> Path:
    if value.lower() in _TRUE:
        runs = Path("outputs") / command / "runs"
        candidates = sorted(
            (d for d in runs.glob("*") if (d / CHECKPOINT).is_file()
             and (read_summary(d) or {}).get("status") != "ok"),
            key=lambda d: (d / CHECKPOINT).stat().st_mtime,
        )
        if not candidates:
            raise UserError(f"resume=true: no interrupted run with a checkpoint under {runs}; "
                            f"pass resume=RUN_FOLDER")
        return candidates[-1]
    path = Path(value)
    if path.is_file() and path.suffix == ".pt":  # <run>/checkpoints/last.pt
        path = path.parent.parent
    if not (path / CHECKPOINT).is_file():
        raise UserError(f"resume={value}: no checkpoint at {path / CHECKPOINT}")
    return path


def resolve_resume(command: str, args: list[str]) -> list[str]:
    """Rewrite ``resume=...`` into the run folder plus its saved overrides."""
    resume = [a for a in args if _key(a) == "resume"]
    if not resume:
        return args
    value = resume[-1].split("=", 1)[1]
    if is_off(value):
        return args
    explicit_dir = any(_key(a) in ("hydra.run.dir", "hydra.sweep.dir") for a in args)
    multirun = any(a in ("-m", "--multirun") for a in args)
    if multirun or (explicit_dir and value.lower() in _TRUE):
        return args  # each job resumes from the checkpoint in its own folder, if there is one
    folder = _run_folder(value, command)
    saved_file = folder / ".hydra" / "overrides.yaml"
    saved = yaml.safe_load(saved_file.read_text()) if saved_file.is_file() else []
    given = {_key(a) for a in args}
    replay = [o for o in saved or [] if _key(o) not in given and _key(o) != "resume"]
    rest = [a for a in args if _key(a) != "resume"]
    return [*replay, *rest, "resume=true", f"hydra.run.dir={folder}"]


def checkpoint_to_resume(resume, run_dir: Path) -> Path | None:
    """Inside the task: the run folder's own checkpoint when resuming (the bridge already chose the folder)."""
    if is_off(resume):
        return None
    path = Path(run_dir) / CHECKPOINT
    if path.is_file():
        return path
    log.info(f"resume: no checkpoint in {run_dir}, starting from scratch")
    return None
