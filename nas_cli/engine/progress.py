"""Progress bars: rich on a terminal, silent otherwise (CI logs get one line per epoch).

The bar is redrawn from the training thread, at most a few times a second: rich's
own refresh thread competes with the training loop for the GIL and cost several
percent of throughput on a 2-core machine. Ticks are counted here and handed to rich
only at a redraw: rich's own bookkeeping per step (a lock, a speed sample) cost a
small network on a GPU a third of its steps per second.
"""

from __future__ import annotations

import time
from typing import Any

from rich import get_console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

REDRAW_EVERY_S = 0.25


class TrainingProgress(Progress):
    """A ``rich.progress.Progress`` that redraws only when ``tick`` finds the last redraw stale."""

    def __init__(self, enabled: bool = True):
        console = get_console()  # the console Hydra's rich log handler writes to: lines land above the bar
        super().__init__(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            TextColumn("{task.fields[info]}"),
            console=console,
            transient=True,
            auto_refresh=False,
            disable=not (enabled and console.is_terminal),
        )
        self._drawn_at = 0.0
        self._ticks: dict[TaskID, int] = {}

    def tick(self, task: TaskID) -> None:
        """Advance ``task`` by one step; redraw if the screen is older than ``REDRAW_EVERY_S``."""
        if self.disable:
            return
        self._ticks[task] = self._ticks.get(task, 0) + 1
        now = time.monotonic()
        if now - self._drawn_at > REDRAW_EVERY_S:
            self._drawn_at = now
            for pending, steps in self._ticks.items():
                self.advance(pending, steps)
            self._ticks.clear()
            self.refresh()

    def reset(self, task_id: TaskID, **kwargs: Any) -> None:
        self._ticks.pop(task_id, None)  # ticks of the previous pass no longer count
        super().reset(task_id, **kwargs)
