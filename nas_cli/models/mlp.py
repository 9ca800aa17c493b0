"""A multilayer perceptron over flattened inputs."""

from __future__ import annotations

import math

from torch import nn

from nas_cli.models.init import initialize
from nas_cli.models.layers import linear


class MLP(nn.Sequential):
    """``depth`` hidden layers of ``width`` units: Linear (DropConnect if ``dropconnect`` > 0),
    optional BatchNorm, ReLU, optional dropout; then a plain linear classifier."""

    def __init__(self, in_shape, num_classes: int, width: int = 256, depth: int = 2, dropout: float = 0.0,
                 dropconnect: float = 0.0, batchnorm: bool = False, init: str = "default"):
        layers: list[nn.Module] = [nn.Flatten()]
        features = math.prod(in_shape)
        for _ in range(depth):
            # BatchNorm's shift makes the linear bias redundant
            layers.append(linear(features, width, bias=not batchnorm, dropconnect=dropconnect))
            if batchnorm:
                layers.append(nn.BatchNorm1d(width))
            layers.append(nn.ReLU(inplace=True))
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
            features = width
        layers.append(nn.Linear(features, num_classes))
        super().__init__(*layers)
        initialize(self, init)
