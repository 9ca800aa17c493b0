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


@dataclass
class Schedule:
    """Constant lr (``sched=none``); subclasses shape it. ``warmup_epochs`` ramps linearly from 0."""

    warmup_epochs: float = 0.0

    def factor(self, epoch: float, epochs: int) -> float:
        return 1.0

    def build(self, optimizer: Optimizer, steps_per_epoch: int, epochs: int) -> LambdaLR:
        steps_per_epoch = max(1, steps_per_epoch)

        def multiplier(step: int) -> float:
            epoch = step / steps_per_epoch
            warm = min(1.0, (step + 1) / (self.warmup_epochs * steps_per_epoch)) if self.warmup_epochs > 0 else 1.0
            return warm * self.factor(epoch, epochs)

        return LambdaLR(optimizer, multiplier)


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

    min_factor: float = 0.0

    def factor(self, epoch: float, epochs: int) -> float:
        span = max(epochs - self.warmup_epochs, 1e-9)
        progress = min(1.0, max(0.0, (epoch - self.warmup_epochs) / span))
        return self.min_factor + (1 - self.min_factor) * 0.5 * (1 + math.cos(math.pi * progress))
