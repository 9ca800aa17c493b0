"""The supervised loss every trained model goes through, auxiliary heads included."""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn


class AuxiliaryLogits(NamedTuple):
    """What a model with an auxiliary classifier returns in training (in eval it returns logits alone)."""

    logits: torch.Tensor
    aux: torch.Tensor
    weight: float  # the auxiliary cross-entropy's weight in the loss


def cross_entropy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The supervised step's loss: returns (loss, logits); an auxiliary head adds its weighted loss."""
    out = model(x)
    if isinstance(out, AuxiliaryLogits):
        return F.cross_entropy(out.logits, y) + out.weight * F.cross_entropy(out.aux, y), out.logits
    return F.cross_entropy(out, y), out
