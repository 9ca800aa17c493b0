"""SIGINT and SIGTERM ask a run to stop at its next safe point, instead of wherever they land.

SLURM, Kubernetes and submitit send SIGTERM on preemption or at a time limit; Ctrl-C sends
SIGINT. Either one only sets a flag. Loops call ``Run.stop_point`` where their state is
consistent (after a batch, an environment step, a child): there they write their checkpoint
and raise ``Interrupted``, and the CLI exits with 128 + the signal's number (130, 143). A
second signal means "now": ``Interrupted(hard=True)`` is raised wherever the program is, and
the last checkpoint on disk is what a resume continues from.

Under submitit, SLURM's warning signal (``SUBMITIT_PREEMPT_SIGNAL``, USR2 by default) is a
stop signal too: the run checkpoints at its safe point, records ``interrupted``, and only then
is submitit's own handler called, which requeues the job (``RunOptions`` resumes a requeued
job in its folder). Worker processes follow their parent's request through a shared event
(``follow``), and ignore the signals themselves (``ignore_in_worker``): the parent decides when
they stop.

However many signals arrive, the record is written: after the one hard stop, and while a run writes
its final record (``finishing``), further signals are only counted. In a sweep whose jobs run in
worker processes (``hydra/launcher=joblib``), the parent passes each stop signal on to its workers
(``forward_to_workers``); a worker keeps a stop request for the rest of its life, so a job it starts
afterwards records ``interrupted`` at its first safe point, and an interrupted job ends as an ordinary
failed job (``JobStopped``) so that its siblings are not killed while they write their records.
"""

from __future__ import annotations

import os
import signal
import threading
from contextlib import contextmanager
from pathlib import Path

PREEMPT_SIGNAL = signal.Signals[f"SIG{os.environ.get('SUBMITIT_PREEMPT_SIGNAL', 'USR2')}"]  # submitit's warning
STOP_SIGNALS = tuple(dict.fromkeys((signal.SIGINT, signal.SIGTERM, PREEMPT_SIGNAL)))


class _Stop:
    signum: int

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name

    @property
    def exit_code(self) -> int:
        """The shell's 128 + the signal's number."""
        return 128 + self.signum


class Interrupted(_Stop, KeyboardInterrupt):
    """The run stopped because of a signal; ``exit_code`` is the shell's 128 + signal number."""

    def __init__(self, signum: int = signal.SIGINT, hard: bool = False):
        self.signum, self.hard = int(signum), hard
        self.run_dir: Path | None = None  # set by the run that recorded the interruption (for the resume hint)
        how = "a second" if hard else "at a safe point after"
        super().__init__(f"stopped {how} {self.name}")

    def __reduce__(self):  # raised in a worker process, re-raised in its parent
        return Interrupted, (self.signum, self.hard)


class JobStopped(_Stop, Exception):
    """An interrupted sweep job, in a worker process: an ``Exception`` so that the launcher records a
    failed job and lets the other jobs finish writing, where a ``KeyboardInterrupt`` would kill them."""

    def __init__(self, signum: int = signal.SIGTERM, run_dir: str | None = None):
        self.signum, self.run_dir = int(signum), run_dir
        super().__init__(f"stopped at a safe point after {signal.Signals(self.signum).name}")

    def __reduce__(self):
        return JobStopped, (self.signum, self.run_dir)


SWEEP_PARENT = "NAS_CLI_SWEEP_PARENT"  # set by a sweep's parent process, read by its worker processes

_requested: list[int] = []  # the signals received (the first one names the interruption)
_depth = 0
_saved: dict[int, object] = {}
_shared = None  # a multiprocessing Event: the parent process asked its workers to stop
_stopping = False  # the hard stop was raised, or a record is being written: further signals are only counted
_forwarding = False  # a sweep's parent: stop signals go on to the worker processes
_sticky = False  # a sweep's worker: a stop request outlives the job it arrived in
_exit_after = False  # the process ends when the command does: after a stop, late signals are ignored


def requested() -> int | None:
    """The signal that asked to stop, or None."""
    if _requested:
        return _requested[0]
    if _shared is not None and _shared.is_set():
        return signal.SIGTERM
    return None


def check() -> None:
    """Raise ``Interrupted`` if a stop was asked for (call it where stopping loses nothing)."""
    signum = requested()
    if signum is not None:
        raise stopped(signum)


def stopped(signum: int) -> Interrupted:
    """The ``Interrupted`` to raise at a safe point (``no_hard_stop`` from here on)."""
    no_hard_stop()
    return Interrupted(signum)


def no_hard_stop() -> None:
    """The run is stopping: a further signal is only counted, since a hard stop now could only cut short the
    record the run is about to write."""
    global _stopping
    _stopping = True


def request(signum: int) -> None:
    """Ask to stop as if ``signum`` had arrived (another process of the run was signalled)."""
    if not _requested:
        _requested.append(int(signum))


def _handler(signum, frame) -> None:
    global _stopping
    _requested.append(signum)
    if _forwarding:
        _forward(signum)
        return
    if len(_requested) > 1 and not _stopping:
        _stopping = True  # one hard stop: a third signal must not cut short the record it is writing
        raise Interrupted(_requested[0], hard=True)


@contextmanager
def finishing(stopped: bool = False):
    """Signals are only counted inside (a run writing its final record); after a stop they stay so."""
    global _stopping
    before = _stopping
    _stopping = True
    try:
        yield
    finally:
        if not stopped:
            _stopping = before


def exit_after_stop() -> None:
    """This process ends with the command: once a run has stopped, late signals are ignored rather than
    restored to their default action, which would kill the process before it reports its exit code."""
    global _exit_after
    _exit_after = True


def forward_to_workers(on: bool = True) -> None:
    """In a sweep's parent: pass stop signals on to the job worker processes instead of acting on them."""
    global _forwarding
    _forwarding = on


def _forward(signum: int) -> None:
    for pid in _sweep_workers():
        try:
            os.kill(pid, signum)
        except ProcessLookupError:
            pass


def _sweep_workers() -> list[int]:
    """Direct children started (with this process's pid in ``SWEEP_PARENT``) to run jobs."""
    me, found = os.getpid(), []
    marker = f"{SWEEP_PARENT}={me}".encode()
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat", "rb") as f:
                ppid = int(f.read().rsplit(b")", 1)[1].split()[1])
            if ppid != me:
                continue
            with open(f"/proc/{entry.name}/environ", "rb") as f:
                environ = f.read().split(b"\0")
            with open(f"/proc/{entry.name}/cmdline", "rb") as f:
                cmdline = f.read()
        except (OSError, ValueError, IndexError):
            continue
        if marker in environ and b"resource_tracker" not in cmdline:  # joblib's bookkeeping process stays
            found.append(int(entry.name))
    return found


def in_sweep_worker() -> bool:
    parent = os.environ.get(SWEEP_PARENT)
    return bool(parent) and parent != str(os.getpid()) and parent == str(os.getppid())


def _keep_requests_in_worker() -> None:
    """A sweep worker counts stop signals from its start to its end, between jobs too."""
    global _sticky
    if threading.current_thread() is not threading.main_thread():
        return
    _sticky = True
    for s in STOP_SIGNALS:
        signal.signal(s, _handler)


@contextmanager
def handled():
    """The stop signals set the stop flag inside this block (main thread only; blocks may nest).

    When the outermost block ends in ``Interrupted`` by the preemption signal, the handler it stood
    in for (submitit's requeue) is called: the run is saved by then."""
    global _depth, _stopping
    if threading.current_thread() is not threading.main_thread() or _sticky:
        yield
        return
    if _depth == 0:
        _requested.clear()
        _stopping = False
        for s in STOP_SIGNALS:
            _saved[s] = signal.signal(s, _handler)
    _depth += 1
    stopped = False
    try:
        yield
    except Interrupted:
        stopped = True
        raise
    finally:
        _depth -= 1
        if _depth == 0:
            late = bool(_requested) and _exit_after  # the process is about to report the stop and exit
            for s, previous in _saved.items():
                signal.signal(s, signal.SIG_IGN if late else previous)
            signum = _requested[0] if _requested else None
            previous = _saved.get(signum)
            _saved.clear()
            _requested.clear()
            if stopped and signum == PREEMPT_SIGNAL and callable(previous):
                previous(signum, None)  # submitit's requeue, now that the run is saved


def follow(event) -> None:
    """In a worker process: stop when the parent sets ``event``; the signals themselves are ignored."""
    global _shared
    _shared = event
    ignore_in_worker()


def ignore_in_worker() -> None:
    """Workers ignore SIGINT/SIGTERM (a terminal or SLURM signals the whole process group): the
    parent stops them at a safe point."""
    for s in STOP_SIGNALS:
        signal.signal(s, signal.SIG_IGN)


if in_sweep_worker():
    _keep_requests_in_worker()
