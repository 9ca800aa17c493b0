"""Where a command line's run goes, decided before Hydra writes anything.

Hydra creates the run folder and writes ``.hydra/`` and the log before a command's code runs, so the
folder is chosen and locked here, from the command line's own words:

- a new run gets a folder of its own (``folders.new_folder``), passed to Hydra as ``hydra.run.dir``;
  a new sweep likewise gets its ``hydra.sweep.dir``;
- a folder named with ``hydra.run.dir=`` or ``resume=`` is locked first, and refused (nothing
  written) when another process holds it or when it holds a run and this is no resume;
- a sweep into a named ``hydra.sweep.dir`` that already holds jobs is refused unless it resumes them;
- a command refused before its run starts leaves the folder as it found it (``folders.Transaction``).

``resume_command`` is what the command line prints after an interruption: the line that continues
this very run, or every job of this sweep.
"""

from __future__ import annotations

import os
import shlex
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from nas_cli.errors import UserError
from nas_cli.runs import folders, signals
from nas_cli.runs.files import SUMMARY
from nas_cli.runs.options import is_off, requeued

OUTPUTS = Path("outputs")
NO_JOB = ("--cfg", "-c", "--info", "-i", "--hydra-help", "--shell-completion", "-sc", "--version")
MULTIRUN = ("-m", "--multirun")

resume_command: str | None = None  # set for the command line being run


def _key(arg: str) -> str:
    return arg.split("=", 1)[0].lstrip("+~")


def _value(args: list[str], key: str) -> str | None:
    found = [a.split("=", 1)[1] for a in args if "=" in a and _key(a) == key]
    return found[-1] if found else None


def _sweep_resume_line(command: str, args: list[str], sweep: Path) -> str:
    kept = [a for a in args if _key(a) not in ("resume", "hydra.sweep.dir") and a not in MULTIRUN]
    return shlex.join(["nas-cli", command, "-m", *kept, f"hydra.sweep.dir={sweep}", "resume=true"])


@contextmanager
def run_folder(command: str, config_name: str, args: list[str]) -> Iterator[list[str]]:
    """Choose, check and lock the run (or sweep) folder of ``args``; yield the arguments Hydra gets."""
    global resume_command
    if any(a in NO_JOB or a.split("=", 1)[0] in NO_JOB for a in args):  # Hydra prints, runs no job
        yield args
        return
    resume = not is_off(_value(args, "resume")) or requeued()  # a requeued SLURM job continues its run
    if any(a in MULTIRUN for a in args):
        with _sweep(command, config_name, args, resume) as args:
            yield args
        return
    given = _value(args, "hydra.run.dir")
    if given is not None and "${" in given:  # Hydra resolves it: the job locks its folder itself
        yield args
        return
    if given is None:
        folder = OUTPUTS / config_name / "runs"
        made = _first_missing(folder)
        folder, created = folders.new_folder(folder), True
        args = [*args, f"hydra.run.dir={folder}"]
    else:
        folder = Path(given)
        made = _first_missing(folder)
        created = not folder.exists()
    try:
        folders.claim(folder, resume=resume, how_to_resume=shlex.join(["nas-cli", command, f"resume={folder}"]))
        resume_command = shlex.join(["nas-cli", command, f"resume={folder}"])
        with folders.Transaction(folder, created=created):
            yield args
    finally:
        if created and not folder.exists():  # refused: the folders made for it go too (outputs/<command>/runs)
            _remove_empty(folder.parent, made)


def _first_missing(folder: Path) -> Path | None:
    """The outermost of ``folder`` and its parents that does not exist yet (None: it exists)."""
    missing = None
    for p in (folder, *folder.parents):
        if p.exists():
            break
        missing = p
    return missing


def _remove_empty(folder: Path, upto: Path | None) -> None:
    if upto is None:
        return
    for p in (folder, *folder.parents):
        try:
            p.rmdir()
        except OSError:  # not empty, or not ours: stop there
            return
        if p == upto:
            return


@contextmanager
def _sweep(command: str, config_name: str, args: list[str], resume: bool) -> Iterator[list[str]]:
    global resume_command
    given = _value(args, "hydra.sweep.dir")
    created = given is None
    made = None
    if given is None:
        made = _first_missing(OUTPUTS / config_name / "multiruns")
        sweep = folders.new_folder(OUTPUTS / config_name / "multiruns")
        args = [*args, f"hydra.sweep.dir={sweep}"]
    else:
        sweep = Path(given)
    resume_line = _sweep_resume_line(command, args, sweep)
    if given is not None and "${" not in given and sweep.is_dir():
        jobs = sorted(p.parent for p in sweep.glob(f"*/{SUMMARY}"))
        busy = next(((job, who) for job in jobs if (who := folders.holder(job)) is not None), None)
        if busy is not None:
            raise UserError(f"{busy[0]} is in use by {busy[1]}: wait for it to end, or sweep into another folder")
        if jobs and not resume:
            raise UserError(
                f"hydra.sweep.dir={sweep} already holds {len(jobs)} jobs: continue them with "
                f"`{resume_line}`, or leave out hydra.sweep.dir for a new folder"
            )
    resume_command = resume_line
    parallel = any(_key(a) == "hydra/launcher" for a in args)  # jobs in worker processes
    saved = os.environ.get(signals.SWEEP_PARENT)
    if parallel:
        os.environ[signals.SWEEP_PARENT] = str(os.getpid())  # workers inherit it: see nas_cli.runs.signals
        signals.forward_to_workers(True)
    try:
        yield args
    finally:
        signals.forward_to_workers(False)
        if saved is None:
            os.environ.pop(signals.SWEEP_PARENT, None)
        else:
            os.environ[signals.SWEEP_PARENT] = saved
        if created and not any(sweep.glob(f"*/{SUMMARY}")):  # no job began: a refused sweep leaves nothing
            shutil.rmtree(sweep, ignore_errors=True)
            _remove_empty(sweep.parent, made)
