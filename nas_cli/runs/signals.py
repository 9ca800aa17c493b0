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
"""

from __future__ import annotations

import os
import signal
import threading
from contextlib import contextmanager

PREEMPT_SIGNAL = signal.Signals[f"SIG{os.environ.get('SUBMITIT_PREEMPT_SIGNAL', 'USR2')}"]  # submitit's warning
STOP_SIGNALS = tuple(dict.fromkeys((signal.SIGINT, signal.SIGTERM, PREEMPT_SIGNAL)))


class Interrupted(KeyboardInterrupt):
    """The run stopped because of a signal; ``exit_code`` is the shell's 128 + signal number."""

    def __init__(self, signum: int = signal.SIGINT, hard: bool = False):
        self.signum, self.hard = int(signum), hard
        self.run_dir = None  # set by the run that recorded the interruption (for the resume hint)
        how = "a second" if hard else "at a safe point after"
        super().__init__(f"stopped {how} {self.name}")

    def __reduce__(self):  # raised in a worker process, re-raised in its parent
        return Interrupted, (self.signum, self.hard)

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


_requested: list[int] = []  # the signals received (the first one names the interruption)
_depth = 0
_saved: dict[int, object] = {}
_shared = None  # a multiprocessing Event: the parent process asked its workers to stop


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
        raise Interrupted(signum)


def request(signum: int) -> None:
    """Ask to stop as if ``signum`` had arrived (another process of the run was signalled)."""
    if not _requested:
        _requested.append(int(signum))


def _handler(signum, frame) -> None:
    _requested.append(signum)
    if len(_requested) > 1:
        raise Interrupted(_requested[0], hard=True)


@contextmanager
def handled():
    """The stop signals set the stop flag inside this block (main thread only; blocks may nest).

    When the outermost block ends in ``Interrupted`` by the preemption signal, the handler it stood
    in for (submitit's requeue) is called: the run is saved by then."""
    global _depth
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    if _depth == 0:
        _requested.clear()
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
            for s, previous in _saved.items():
                signal.signal(s, previous)
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
