"""``resume=true`` / ``resume=PATH``: continue a run in its own folder, with its own config.

Resolved before Hydra composes the config: the run folder becomes ``hydra.run.dir`` and the
run's saved overrides are replayed (the ones given now win), so the resumed run has the config
of the one that stopped. ``resume=true`` picks the newest run of this command that did not
finish (interrupted, failed, or killed while running) and whose config agrees with the overrides
given now, apart from the keys that size a run (``trainer.epochs``, ...) and those that change
nothing in the result (``progress``, ``threads``, ``device``); ``resume=PATH`` with an override that
contradicts the run's config is refused before anything is written. A run held by a live process
(its folder's lock, ``nas_cli.runs.folders``) is never resumed. In a sweep (``-m``) every job
resumes in its own folder.
"""

from __future__ import annotations

from pathlib import Path

import yaml

from nas_cli.errors import UserError
from nas_cli.runs.files import CHECKPOINT, CONFIG, HYDRA, OVERRIDES, SUMMARY
from nas_cli.runs.folders import holder
from nas_cli.runs.options import is_off
from nas_cli.runs.rank import launched_rank
from nas_cli.runs.record import read_summary

RESUMABLE = ("interrupted", "failed", "running")  # a diverged run would diverge again
RUNTIME_KEYS = {"resume", "progress", "threads", "device"}
_TRUE = {"true", "1", "yes", "on"}


def _key(override: str) -> str:
    return override.split("=", 1)[0].lstrip("+~")


def _agrees(folder: Path, given: list[str], budget_keys: set[str]) -> bool:
    """Whether the run's composed config has every value ``given`` names (budget and runtime keys aside)."""
    return _disagreeing(folder, given, budget_keys, first_only=True) == []


def _disagreeing(folder: Path, given: list[str], budget_keys: set[str], first_only: bool = False) -> list[str] | None:
    """The keys among ``given`` whose values differ from the run's composed config (budget and runtime keys
    aside); None when the run has no saved config to compare with."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from omegaconf import OmegaConf

    checked = [
        o
        for o in given
        if "=" in o
        and not o.startswith("-")  # overrides, not Hydra's flags
        and _key(o) not in RUNTIME_KEYS | budget_keys
        and not _key(o).startswith("hydra.")
    ]
    if not checked:
        return []
    if not (folder / CONFIG).is_file():
        return None
    config = OmegaConf.load(folder / CONFIG)
    hydra_file = folder / HYDRA / "hydra.yaml"
    choices = OmegaConf.load(hydra_file).hydra.runtime.choices if hydra_file.is_file() else {}
    differing = []
    for override in OverridesParser.create().parse_overrides(checked):
        key, value = override.key_or_group, override.value()
        if key in choices:
            have = choices[key]
        else:
            have = OmegaConf.select(config, key, default=object(), throw_on_resolution_failure=False)
            have = OmegaConf.to_container(have) if OmegaConf.is_config(have) else have
        if have != value:
            differing.append(key)
            if first_only:
                break
    return differing


def _latest_unfinished(command: str, given: list[str]) -> Path:
    runs = Path("outputs") / command / "runs"
    candidates = []
    for folder in runs.glob("*"):
        summary = read_summary(folder)
        if not summary or summary.get("status") not in RESUMABLE or (_lead() and holder(folder) is not None):
            continue
        if _agrees(folder, given, set(summary.get("budget") or {})):
            candidates.append(folder)
    if not candidates:
        shown = " ".join(a for a in given if "=" in a and _key(a) not in RUNTIME_KEYS)
        raise UserError(
            f"resume=true: no interrupted run (nor a failed one) under {runs}"
            + (f" with {shown}" if shown else "")
            + "; pass resume=RUN_FOLDER"
        )
    return max(candidates, key=lambda d: (d / SUMMARY).stat().st_mtime)


def _named_folder(value: str) -> Path:
    path = Path(value)
    if path.is_file() and path.suffix == ".pt":  # <run>/checkpoints/last.pt
        path = path.parent.parent
    if not ((path / SUMMARY).is_file() or (path / CHECKPOINT).is_file()):
        raise UserError(f"resume={value}: not a run folder (no {SUMMARY} or {CHECKPOINT} there)")
    who = holder(path) if _lead() else None
    if who is not None:
        raise UserError(f"resume={value}: that run is in use by {who}: wait for it to end")
    return path


def _lead() -> bool:
    """Not one of torchrun's other ranks, which resume the folder rank 0 holds."""
    return launched_rank() == 0


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
    if value.lower() in _TRUE:
        folder = _latest_unfinished(command, rest)
    else:
        folder = _named_folder(value)
        budget = set((read_summary(folder) or {}).get("budget") or {})
        changed = _disagreeing(folder, rest, budget)
        if changed:  # None (no saved config): the checkpoint decides
            raise UserError(
                f"resume={value}: the run was made with other values of {', '.join(changed)}; a resumed "
                "run keeps its config: drop those overrides, or start a new run with them"
            )
    saved = _saved_overrides(folder)
    given = {_key(a) for a in rest}
    replay = [o for o in saved if _key(o) not in given and _key(o) != "resume"]
    return [*replay, *rest, "resume=true", f"hydra.run.dir={folder}"]


# Keys that pick code or Hydra's own behaviour: a run folder may come from someone else, and replaying
# its overrides must not let it choose what runs or where files go.
_UNSAFE = ("_target_", "_args_", "_partial_", "_recursive_", "_convert_")


def _saved_overrides(folder: Path) -> list[str]:
    """The run's own overrides, to replay; one that would pick code or Hydra's settings is refused."""
    path = folder / OVERRIDES
    if not path.is_file():
        return []
    try:
        saved = yaml.safe_load(path.read_text()) or []
    except yaml.YAMLError as ex:
        raise UserError(f"{path} is not YAML ({type(ex).__name__}): the run cannot be resumed") from ex
    if not isinstance(saved, list) or not all(isinstance(o, str) for o in saved):
        raise UserError(f"{path}: expected a list of overrides (key=value)")
    for o in saved:
        key, value = _key(o), o.partition("=")[2]
        if (
            key == "hydra"
            or key.startswith(("hydra.", "hydra/"))
            or any(part in _UNSAFE for part in key.split("."))
            or any(word in value for word in _UNSAFE)
            or "${" in value
        ):  # a dict value or a resolver call too
            raise UserError(
                f"{path}: '{o}' picks code or Hydra's settings and is not replayed; "
                "nothing was run (give it yourself if you mean it)"
            )
    return saved
