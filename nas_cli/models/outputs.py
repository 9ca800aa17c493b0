"""What a model returns beyond plain logits (the engine's loss reads it: ``nas_cli.engine.losses``)."""

from __future__ import annotations

from typing import NamedTuple

import torch


class AuxiliaryLogits(NamedTuple):
    """What a model with an auxiliary classifier returns in training (in eval it returns logits alone)."""

    logits: torch.Tensor
    aux: torch.Tensor
    weight: float  # the auxiliary cross-entropy's weight in the loss
