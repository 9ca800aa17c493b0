"""The supervised loss every trained model goes through, auxiliary heads included."""

from __future__ import annotations

from functools import partial

import torch
import torch.nn.functional as F
from torch import nn

from nas_cli.errors import UserError
from nas_cli.models.outputs import AuxiliaryLogits


def cross_entropy(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, label_smoothing: float = 0.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """The supervised step's loss: returns (loss, logits); an auxiliary head adds its weighted loss.

    ``label_smoothing`` ε (Szegedy et al. 2016) trains against (1 - ε) one-hot + ε / classes, the
    auxiliary head too; 0 is the plain cross-entropy. ``y``: class indices, or soft targets (N, classes)
    of probabilities, what MixUp/CutMix batches carry (``F.cross_entropy`` takes both; smoothing then
    applies to the soft target).
    """
    out = model(x)
    if isinstance(out, AuxiliaryLogits):
        return (
            F.cross_entropy(out.logits, y, label_smoothing=label_smoothing)
            + out.weight * F.cross_entropy(out.aux, y, label_smoothing=label_smoothing)
        ), out.logits
    return F.cross_entropy(out, y, label_smoothing=label_smoothing), out


def smoothed_cross_entropy(label_smoothing: float):
    """The training loss for ``loss.label_smoothing``: ``cross_entropy`` itself at 0."""
    if not 0.0 <= label_smoothing < 1.0:
        raise UserError(f"loss.label_smoothing={label_smoothing}: must be in [0, 1)")
    return cross_entropy if label_smoothing == 0 else partial(cross_entropy, label_smoothing=label_smoothing)
