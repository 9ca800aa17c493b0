"""Decisions ``Trainer.fit`` takes on a metrics column after each epoch: stop early, keep the best weights.

Both watch one column of the epoch's row (``metrics.csv``) and keep their state in the checkpoint, so a
resumed run decides exactly as an uninterrupted one.
"""

from __future__ import annotations

import math

from nas_cli.engine.schedules import monitor_mode
from nas_cli.errors import UserError

SCORE = "score"  # BestCheckpoint.monitor: the fit's own score (train: val_acc, detect: val_map50_nms)


class Watch:
    """The best value of one metrics column so far, and the epoch it came from.

    Improving means beating the best by more than ``min_delta`` (absolute, in the column's units): down
    for ``mode="min"``, up for ``"max"``. The first finite value always improves.
    """

    def __init__(self, monitor: str, mode: str | None, min_delta: float, key: str):
        if min_delta < 0:
            raise UserError(f"{key}.min_delta={min_delta}: must be 0 or more")
        self.monitor, self.min_delta, self.key = monitor, float(min_delta), key
        self.mode = monitor_mode(monitor, mode, f"{key}.mode")
        self.best: float | None = None
        self.best_epoch: int | None = None

    def value(self, row: dict) -> float:
        """The monitored figure of ``row``; a name that is not a column is the user's mistake."""
        if self.monitor not in row:
            raise UserError(
                f"{self.key}.monitor={self.monitor} is not a column of this run's metrics ({', '.join(sorted(row))})"
            )
        return float(row[self.monitor])

    def improves(self, value: float) -> bool:
        if not math.isfinite(value):
            return False
        if self.best is None:
            return True
        return value < self.best - self.min_delta if self.mode == "min" else value > self.best + self.min_delta

    def update(self, row: dict) -> bool:
        """Read the epoch's row; True when it is the new best."""
        value = self.value(row)
        if not self.improves(value):
            return False
        self.best, self.best_epoch = value, int(row["epoch"])
        return True

    def state_dict(self) -> dict:
        return {"best": self.best, "best_epoch": self.best_epoch}

    def load_state_dict(self, state: dict) -> None:
        self.best, self.best_epoch = state["best"], state["best_epoch"]


class EarlyStopping:
    """Stop training once ``monitor`` has gone ``patience`` epochs in a row without improving.

    Args:
        monitor: a metrics column (``val_loss``, ``val_acc``, ...); None: never stop early.
        mode: ``min`` | ``max``; None: from the monitor's name (accuracies rise, losses fall).
        patience: epochs without improvement tolerated; the run stops at the ``patience``-th
            (Keras' and Lightning's rule: with patience 3 and the best at epoch 4, it stops after epoch 7).
        min_delta: the smallest change (absolute) that counts as improving.
    """

    def __init__(self, monitor: str | None = None, mode: str | None = None, patience: int = 10, min_delta: float = 0.0):
        if int(patience) < 1:
            raise UserError(f"trainer.early_stop.patience={patience}: must be 1 or more")
        self.monitor, self.mode, self.patience, self.min_delta = monitor, mode, int(patience), float(min_delta)
        self.watch = Watch(monitor, mode, min_delta, "trainer.early_stop") if monitor else None
        self.bad_epochs = 0
        self.stopped_epoch: int | None = None

    @property
    def active(self) -> bool:
        return self.watch is not None

    def fresh(self) -> EarlyStopping:
        """A copy with no history: each fit starts its own count."""
        return EarlyStopping(self.monitor, self.mode, self.patience, self.min_delta)

    def update(self, row: dict) -> bool:
        """Read the epoch's row; True when training should stop after it."""
        if self.watch is None:
            return False
        self.bad_epochs = 0 if self.watch.update(row) else self.bad_epochs + 1
        if self.bad_epochs >= self.patience:
            self.stopped_epoch = int(row["epoch"])
            return True
        return False

    def reason(self) -> str:
        w = self.watch
        assert w is not None  # only an active rule stops training, and only a stop has a reason
        return (
            f"{w.monitor} did not improve by more than {w.min_delta:g} for {self.patience} epochs "
            f"(best {w.best:.6g} at epoch {w.best_epoch})"
        )

    def figures(self) -> dict:
        """The summary's record of the decision (nothing when early stopping is off)."""
        if self.watch is None:
            return {}
        stopped = self.stopped_epoch is not None
        return {
            "stopped_early": stopped,
            **({"stopped_epoch": self.stopped_epoch, "stop_reason": self.reason()} if stopped else {}),
        }

    def state_dict(self) -> dict:
        return {
            "watch": self.watch.state_dict() if self.watch else None,
            "bad_epochs": self.bad_epochs,
            "stopped_epoch": self.stopped_epoch,
        }

    def load_state_dict(self, state: dict) -> None:
        if self.watch is not None and state.get("watch") is not None:
            self.watch.load_state_dict(state["watch"])
        self.bad_epochs, self.stopped_epoch = int(state.get("bad_epochs", 0)), state.get("stopped_epoch")


class BestCheckpoint:
    """Keep the weights of the epoch where ``monitor`` was best, as ``best.pt`` beside ``model.pt``.

    Args:
        monitor: a metrics column, or ``score``: the figure the command's fit scores epochs by
            (train and search-darts: ``val_acc``; detect: ``val_map50_nms``); None: no best.pt.
        mode: ``min`` | ``max``; None: from the monitor's name.
        min_delta: the smallest change (absolute) that counts as a new best.
    """

    def __init__(self, monitor: str | None = SCORE, mode: str | None = None, min_delta: float = 0.0):
        self.monitor, self.mode, self.min_delta = monitor, mode, float(min_delta)
        self.watch: Watch | None = None

    def fresh(self, score: str) -> BestCheckpoint:
        """A copy for one fit, its ``score`` monitor resolved to the fit's score column."""
        best = BestCheckpoint(self.monitor, self.mode, self.min_delta)
        if self.monitor:
            best.watch = Watch(
                score if self.monitor == SCORE else self.monitor, self.mode, self.min_delta, "trainer.best"
            )
        return best

    @property
    def active(self) -> bool:
        return self.watch is not None

    def update(self, row: dict) -> bool:
        """Read the epoch's row; True when its weights are the new best (to be saved)."""
        return self.watch is not None and self.watch.update(row)

    def figures(self) -> dict:
        if self.watch is None or self.watch.best_epoch is None:
            return {}
        return {"best_epoch": self.watch.best_epoch, "best_monitor": self.watch.monitor}

    def state_dict(self) -> dict:
        return self.watch.state_dict() if self.watch else {}

    def load_state_dict(self, state: dict) -> None:
        if self.watch is not None and state:
            self.watch.load_state_dict(state)
