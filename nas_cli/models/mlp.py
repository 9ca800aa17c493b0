"""A multilayer perceptron over flattened inputs."""

from __future__ import annotations

import math

from torch import nn


class MLP(nn.Sequential):
    """``depth`` hidden layers of ``width`` units with ReLU (and optional dropout)."""

    def __init__(self, in_shape, num_classes: int, width: int = 256, depth: int = 2, dropout: float = 0.0):
        layers: list[nn.Module] = [nn.Flatten()]
        features = math.prod(in_shape)
        for _ in range(depth):
            layers += [nn.Linear(features, width), nn.ReLU(inplace=True)]
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
            features = width
        layers.append(nn.Linear(features, num_classes))
        super().__init__(*layers)
