"""Penalties added to the training loss, logged apart from the data loss."""

from __future__ import annotations

import torch
from torch import nn


class Regularizer:
    """``l2``: adds ``l2 / 2 * sum(w ** 2)`` over trainable parameters to the loss.

    The gradient of that penalty is ``l2 * w``: with plain SGD it is exactly
    ``weight_decay=l2`` (with adaptive optimizers the two differ, which is the point
    of having both).
    """

    def __init__(self, l2: float = 0.0):
        self.l2 = float(l2)

    @property
    def active(self) -> bool:
        return self.l2 > 0

    def penalty(self, model: nn.Module) -> torch.Tensor:
        params = [p for p in model.parameters() if p.requires_grad]
        return 0.5 * self.l2 * torch.stack([p.pow(2).sum() for p in params]).sum()
