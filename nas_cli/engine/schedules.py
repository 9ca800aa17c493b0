"""Learning-rate schedules, stepped once per iteration, with optional linear warmup.

Each schedule is a multiplier of the optimizer's base lr as a function of the
(fractional) epoch, so every one composes with warmup and works at any batch size.
"""

from __future__ import annotations

import math
from bisect import bisect_right
from dataclasses import dataclass, field

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR

from nas_cli.errors import UserError


@dataclass
class Schedule:
    """Constant lr (``sched=none``); subclasses shape it. ``warmup_epochs`` ramps linearly from 0;
    after it the lr never falls below ``min_factor`` x base lr. ``every="step"``: the lr follows the
    schedule at every iteration; ``"epoch"``: it is held at the schedule's value at each epoch's start
    (torch schedulers stepped once an epoch, as DARTS's and PC-DARTS's code do; the warmup then ramps
    per epoch too)."""

    warmup_epochs: float = 0.0
    min_factor: float = 0.0
    every: str = "step"

    def __post_init__(self) -> None:
        check_every(self.every)

    def factor(self, epoch: float, epochs: int) -> float:
        return 1.0

    def build(self, optimizer: Optimizer, steps_per_epoch: int, epochs: int) -> LambdaLR:
        steps_per_epoch = max(1, steps_per_epoch)
        ramp = self.warmup_epochs * steps_per_epoch  # warmup length in steps

        def multiplier(step: int) -> float:
            epoch = step / steps_per_epoch
            if self.every == "epoch":
                epoch = math.floor(epoch)
                step = epoch * steps_per_epoch + steps_per_epoch - 1  # the warmup reached by the epoch's end
            warm = min(1.0, (step + 1) / ramp) if self.warmup_epochs > 0 else 1.0
            return warm * max(self.min_factor, self.factor(epoch, epochs))

        return LambdaLR(optimizer, multiplier)

    def epoch_end(self, metrics: dict) -> None:
        """Called with the epoch's metrics; schedules that react to them (Plateau) override this."""

    def cycle_ends(self, epoch: int, epochs: int) -> bool:
        """Whether a cycle of a cyclic schedule ends after ``epoch`` completed epochs (snapshot time)."""
        return False

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


@dataclass
class Step(Schedule):
    """Multiply the lr by ``gamma`` every ``step_size`` epochs."""

    step_size: int = 30
    gamma: float = 0.1

    def factor(self, epoch: float, epochs: int) -> float:
        return self.gamma ** int(epoch // self.step_size)


@dataclass
class MultiStep(Schedule):
    """Multiply the lr by ``gamma`` at each epoch in ``milestones``."""

    milestones: list[int] = field(default_factory=lambda: [30, 60, 90])
    gamma: float = 0.1

    def factor(self, epoch: float, epochs: int) -> float:
        return self.gamma ** bisect_right(sorted(self.milestones), int(epoch))


@dataclass
class Cosine(Schedule):
    """Cosine decay from the base lr to ``min_factor`` x base lr over the run (after warmup)."""

    def factor(self, epoch: float, epochs: int) -> float:
        span = max(epochs - self.warmup_epochs, 1e-9)
        progress = min(1.0, max(0.0, (epoch - self.warmup_epochs) / span))
        return self.min_factor + (1 - self.min_factor) * 0.5 * (1 + math.cos(math.pi * progress))


@dataclass
class CyclicCosine(Schedule):
    """Cosine decay restarted ``cycles`` times over the run (SGDR without warm restarts' growth).

    Each cycle ends at a low lr: the model there is a snapshot worth keeping, and
    averaging the snapshots' softmax outputs gives a snapshot ensemble for free.
    """

    cycles: int = 4

    def cycle_length(self, epochs: int) -> float:
        return epochs / max(1, self.cycles)

    def factor(self, epoch: float, epochs: int) -> float:
        length = self.cycle_length(epochs)
        progress = (epoch % length) / length
        return self.min_factor + (1 - self.min_factor) * 0.5 * (1 + math.cos(math.pi * progress))

    def cycle_ends(self, epoch: int, epochs: int) -> bool:
        """True after the last epoch of a cycle (``epoch`` counts completed epochs)."""
        length = self.cycle_length(epochs)
        return math.isclose(epoch / length, round(epoch / length)) and epoch > 0


@dataclass
class WarmRestarts(Schedule):
    """SGDR (Loshchilov & Hutter 2017): cosine decay from the base lr to ``min_factor`` x base lr over a first
    cycle of ``first_cycle`` epochs, restarted at the base lr with each cycle ``cycle_mult`` times as long as the
    one before (ENAS: 10 and 2, so 10 + 20 + 40 + 80 + 160 = 310 epochs end at the bottom of a cycle). Unlike
    ``CyclicCosine`` it keeps no snapshots."""

    first_cycle: float = 10.0
    cycle_mult: float = 2.0

    def __post_init__(self) -> None:
        super().__post_init__()
        if float(self.first_cycle) <= 0:
            raise UserError(f"sched.first_cycle={self.first_cycle}: use a positive number of epochs")
        if float(self.cycle_mult) < 1:
            raise UserError(f"sched.cycle_mult={self.cycle_mult}: use 1 (equal cycles) or more")

    def factor(self, epoch: float, epochs: int) -> float:
        into, length = max(0.0, epoch - self.warmup_epochs), float(self.first_cycle)
        while into >= length:  # a handful of cycles at most: each one is cycle_mult times the last
            into -= length
            length *= self.cycle_mult
        return self.min_factor + (1 - self.min_factor) * 0.5 * (1 + math.cos(math.pi * into / length))


class Plateau(Schedule):
    """Multiply the lr by ``factor`` when ``monitor`` has not improved for ``patience`` epochs.

    ``mode="min"``: improving means falling below ``best * (1 - threshold)`` (a loss);
    ``"max"``: rising above ``best * (1 + threshold)`` (an accuracy); None: from the monitor's
    name (see ``monitor_mode``). The lr never drops below ``min_factor`` x base lr.
    """

    def __init__(
        self,
        monitor: str = "val_loss",
        factor: float = 0.1,
        patience: int = 5,
        threshold: float = 1e-4,
        min_factor: float = 0.0,
        warmup_epochs: float = 0.0,
        mode: str | None = None,
        every: str = "step",
    ):
        # a plain class: a dataclass field named `factor` would shadow the method
        self.every = check_every(every)
        self.monitor, self.decay, self.patience = monitor, factor, patience
        self.threshold, self.min_factor, self.warmup_epochs = threshold, min_factor, warmup_epochs
        self.mode = monitor_mode(monitor, mode, "sched.mode")
        self.scale, self.best, self.bad_epochs = 1.0, (math.inf if self.mode == "min" else -math.inf), 0

    def factor(self, epoch: float, epochs: int) -> float:
        return self.scale

    def improved(self, value: float) -> bool:
        if not math.isfinite(self.best):  # the first epoch
            return math.isfinite(value)
        margin = self.threshold * abs(self.best)  # relative, as torch's ReduceLROnPlateau's default
        return value < self.best - margin if self.mode == "min" else value > self.best + margin

    def epoch_end(self, metrics: dict) -> None:
        if self.monitor not in metrics:
            raise UserError(
                f"sched.monitor={self.monitor} is not a column of this run's metrics ({', '.join(sorted(metrics))})"
            )
        value = metrics[self.monitor]
        if self.improved(value):
            self.best, self.bad_epochs = value, 0
            return
        self.bad_epochs += 1
        if self.bad_epochs > self.patience:
            self.scale = max(self.min_factor, self.scale * self.decay)
            self.bad_epochs = 0

    def state_dict(self) -> dict:
        return {"scale": self.scale, "best": self.best, "bad_epochs": self.bad_epochs}

    def load_state_dict(self, state: dict) -> None:
        self.scale, self.best, self.bad_epochs = state["scale"], state["best"], state["bad_epochs"]


MAXIMIZED = ("acc", "return", "reward", "score", "map", "auc", "f1")  # name parts of figures that should rise


def monitor_mode(monitor: str, mode: str | None, key: str) -> str:
    """``mode`` checked, or (None) guessed from the monitored figure's name: accuracies, returns, rewards
    and scores are maximised, everything else (losses, errors) minimised."""
    if mode is None:
        return "max" if any(part in monitor.lower() for part in MAXIMIZED) else "min"
    if mode not in ("min", "max"):
        raise UserError(f"{key} must be min or max (or null: from the monitor's name), not {mode!r}")
    return mode


def check_every(every: str) -> str:
    if every not in ("step", "epoch"):
        raise UserError(
            f"sched.every={every}: use step (the lr changes every iteration) or epoch (held within each epoch)"
        )
    return every
