"""Run folders belong to one process at a time, and a new run never lands in an old run's folder.

- ``new_folder`` names a fresh run folder after the launch time and creates it with an exclusive
  ``mkdir``: launches in the same second (a shell loop with ``&``, a job array) get ``<time>``,
  ``<time>_1``, ``<time>_2``, ... instead of one shared folder.
- ``claim`` takes an OS lock (``fcntl.flock`` on ``<run>/.lock``) for as long as the process lives or
  until ``release``: the kernel drops it on any death, SIGKILL included, so a killed run can be
  resumed at once and a live one can never be written by two processes. A folder that holds another
  run's record is refused unless the command resumes it.
- ``Transaction`` is how the command line starts a run: if the command refuses before its run starts
  (a resume whose overrides do not match its checkpoint, a bad option), the folder is put back as it
  was, byte for byte, or removed when the command made it.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import shutil
import socket
from datetime import datetime
from pathlib import Path
from typing import Literal

from nas_cli.errors import UserError
from nas_cli.runs.files import HYDRA, SUMMARY

LOCK = ".lock"
STAMP = "%Y-%m-%d_%H-%M-%S"

_held: dict[Path, int] = {}  # run folder (resolved) -> the open lock file of this process
_started: set[Path] = set()  # run folders whose run has begun in this process (``Run.__enter__``)


def new_folder(parent: str | Path, when: datetime | None = None) -> Path:
    """A run folder under ``parent`` that no other launch can get: ``<time>``, else ``<time>_N``."""
    parent = Path(parent)
    parent.mkdir(parents=True, exist_ok=True)
    stamp = (when or datetime.now()).strftime(STAMP)
    for n in range(10_000):
        folder = parent / (stamp if n == 0 else f"{stamp}_{n}")
        try:
            folder.mkdir()  # atomic, on NFS too: exactly one launch gets each name
            return folder
        except FileExistsError:
            continue
    raise UserError(f"{parent}: 10,000 runs started in the same second; give hydra.run.dir")


def holder(folder: str | Path) -> str | None:
    """Who holds ``folder``'s lock ("process N on HOST"), or None when no process does."""
    path = Path(folder) / LOCK
    if Path(folder).resolve() in _held or not path.is_file():
        return None
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError as ex:
        if ex.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            raise
        who = path.read_text().strip() or "another process"
        return who
    finally:
        os.close(fd)
    return None


def claim(folder: str | Path, *, resume: bool, how_to_resume: str | None = None) -> Path:
    """Lock ``folder`` for this process; refuse (changing nothing) a folder in use, or one holding another
    run's record when not resuming. Stale temporary files of a killed run are removed once the lock is held."""
    folder = Path(folder)
    key = folder.resolve()
    if key in _held:
        return folder
    who = holder(folder)
    if who is not None:
        raise UserError(
            f"{folder} is in use by {who}: wait for it to end, or start a new run (leave out hydra.run.dir / resume)"
        )
    if not resume and (folder / SUMMARY).is_file():
        hint = how_to_resume or f"resume={folder}"
        raise UserError(
            f"{folder} already holds a run: continue it with `{hint}`, or leave out hydra.run.dir for a new folder"
        )
    folder.mkdir(parents=True, exist_ok=True)
    fd = os.open(folder / LOCK, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as ex:
        os.close(fd)
        if ex.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):  # lost a race for it
            raise UserError(f"{folder} is in use by another process: wait for it to end") from ex
        raise
    os.ftruncate(fd, 0)
    os.write(fd, f"process {os.getpid()} on {socket.gethostname()}\n".encode())
    _held[key] = fd
    _remove_stale_temporaries(folder)
    return folder


def release(folder: str | Path) -> None:
    """Give up this process's lock on ``folder`` (the kernel also does at exit)."""
    fd = _held.pop(Path(folder).resolve(), None)
    if fd is not None:
        os.close(fd)  # closing the file drops the flock


def release_all() -> None:
    """Give up every lock this process holds (a command line's runs are over)."""
    for folder in list(_held):
        release(folder)
    _started.clear()


def mark_started(folder: str | Path) -> None:
    """The run in ``folder`` has begun: from here on its record speaks for it (see ``Transaction``)."""
    _started.add(Path(folder).resolve())


def _remove_stale_temporaries(folder: Path) -> None:
    """``.NAME.XXXX.tmp`` files are atomic writes cut short by SIGKILL; under the lock none is in flight."""
    for tmp in folder.rglob(".*.tmp"):
        if tmp.is_file():
            tmp.unlink(missing_ok=True)


class Transaction:
    """Start a run in ``folder`` so that a command refused before its run begins leaves it as it was.

    Hydra writes ``.hydra/`` and the log file before the command's code runs; if the command then refuses
    (``Run.__enter__`` never reached), those files are restored to their earlier bytes (a log file is cut
    back to its earlier length), and a folder this transaction created is removed whole.
    """

    def __init__(self, folder: Path, *, created: bool):
        self.folder, self.created = folder, created
        self._saved: dict[Path, bytes] = {}
        self._sizes: dict[Path, int] = {}

    def __enter__(self) -> Transaction:
        hydra = self.folder / HYDRA
        if hydra.is_dir():
            self._saved = {p: p.read_bytes() for p in hydra.iterdir() if p.is_file()}
        self._sizes = {p: p.stat().st_size for p in self.folder.glob("*.log") if p.is_file()}
        return self

    def __exit__(self, kind, ex, tb) -> Literal[False]:
        key = self.folder.resolve()
        started = key in _started
        _started.discard(key)
        release(self.folder)
        if started:
            return False
        if self.created:
            _close_logs_in(key)  # Hydra's job log there: a later write would recreate the removed folder or fail
            shutil.rmtree(self.folder, ignore_errors=True)
        else:
            self._restore()
        return False

    def _restore(self) -> None:
        hydra = self.folder / HYDRA
        if hydra.is_dir():
            for p in hydra.iterdir():
                if p.is_file() and p not in self._saved:
                    p.unlink()
            if not self._saved and not any(hydra.iterdir()):
                hydra.rmdir()
        for p, data in self._saved.items():
            if not p.is_file() or p.read_bytes() != data:
                p.parent.mkdir(exist_ok=True)
                p.write_bytes(data)
        for p in self.folder.glob("*.log"):
            if p not in self._sizes:
                p.unlink()
            elif p.stat().st_size != self._sizes[p]:
                os.truncate(p, self._sizes[p])


def _close_logs_in(folder: Path) -> None:
    """Close and detach the root logger's file handlers that write below ``folder``."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        path = getattr(handler, "baseFilename", None)
        if path is not None and Path(path).resolve().is_relative_to(folder):
            root.removeHandler(handler)
            handler.close()
