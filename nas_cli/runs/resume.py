"""``resume=true`` / ``resume=PATH``: continue a run in its own folder, with its own config.

Resolved before Hydra composes the config: the run folder becomes ``hydra.run.dir`` and the
run's saved overrides are replayed (the ones given now win), so the resumed run has the config
of the one that stopped. ``resume=true`` picks the newest run of this command that did not
finish (interrupted, failed, or killed while running) and whose config agrees with the overrides
given now, apart from the keys that size a run (``trainer.epochs``, ...) and those that change
nothing in the result (``progress``, ``threads``, ``device``). In a sweep (``-m``) every job
resumes in its own folder.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

import yaml

from nas_cli.errors import UserError
from nas_cli.runs.files import CHECKPOINT, CONFIG, HYDRA, OVERRIDES, SUMMARY
from nas_cli.runs.options import is_off
from nas_cli.runs.record import read_summary

RESUMABLE = ("interrupted", "failed", "running")  # a diverged run would diverge again
RUNTIME_KEYS = {"resume", "progress", "threads", "device"}
_TRUE = {"true", "1", "yes", "on"}


def _key(override: str) -> str:
    return override.split("=", 1)[0].lstrip("+~")


def still_running(summary: dict) -> bool:
    """A ``running`` summary written by a process that is alive on this machine."""
    if summary.get("status") != "running" or summary.get("host") != socket.gethostname():
        return False
    try:
        os.kill(int(summary.get("pid", -1)), 0)
    except (OSError, ValueError, OverflowError):
        return False
    return True


def _agrees(folder: Path, given: list[str], budget_keys: set[str]) -> bool:
    """Whether the run's composed config has every value ``given`` names (budget and runtime keys aside)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from omegaconf import OmegaConf

    checked = [o for o in given if "=" in o and not o.startswith("-")  # overrides, not Hydra's flags
               and _key(o) not in RUNTIME_KEYS | budget_keys and not _key(o).startswith("hydra.")]
    if not checked:
        return True
    if not (folder / CONFIG).is_file():
        return False
    config = OmegaConf.load(folder / CONFIG)
    hydra_file = folder / HYDRA / "hydra.yaml"
    choices = OmegaConf.load(hydra_file).hydra.runtime.choices if hydra_file.is_file() else {}
    for override in OverridesParser.create().parse_overrides(checked):
        key, value = override.key_or_group, override.value()
        if key in choices:
            have = choices[key]
        else:
            have = OmegaConf.select(config, key, default=object())
            have = OmegaConf.to_container(have) if OmegaConf.is_config(have) else have
        if have != value:
            return False
    return True


def _latest_unfinished(command: str, given: list[str]) -> Path:
    runs = Path("outputs") / command / "runs"
    candidates = []
    for folder in runs.glob("*"):
        summary = read_summary(folder)
        if not summary or summary.get("status") not in RESUMABLE or still_running(summary):
            continue
        if _agrees(folder, given, set(summary.get("budget") or {})):
            candidates.append(folder)
    if not candidates:
        shown = " ".join(a for a in given if "=" in a and _key(a) not in RUNTIME_KEYS)
        raise UserError(f"resume=true: no interrupted run (nor a failed one) under {runs}"
                        + (f" with {shown}" if shown else "") + "; pass resume=RUN_FOLDER")
    return max(candidates, key=lambda d: (d / SUMMARY).stat().st_mtime)


def _named_folder(value: str) -> Path:
    path = Path(value)
    if path.is_file() and path.suffix == ".pt":  # <run>/checkpoints/last.pt
        path = path.parent.parent
    if not ((path / SUMMARY).is_file() or (path / CHECKPOINT).is_file()):
        raise UserError(f"resume={value}: not a run folder (no {SUMMARY} or {CHECKPOINT} there)")
    summary = read_summary(path)
    if summary and still_running(summary):
        raise UserError(f"resume={value}: that run is still running (process {summary.get('pid')})")
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
        return args  # each job resumes in its own folder, if it has a run there
    rest = [a for a in args if _key(a) != "resume"]
    folder = _latest_unfinished(command, rest) if value.lower() in _TRUE else _named_folder(value)
    saved_file = folder / OVERRIDES
    saved = yaml.safe_load(saved_file.read_text()) if saved_file.is_file() else []
    given = {_key(a) for a in rest}
    replay = [o for o in saved or [] if _key(o) not in given and _key(o) != "resume"]
    return [*replay, *rest, "resume=true", f"hydra.run.dir={folder}"]
