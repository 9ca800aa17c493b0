"""A multilayer perceptron over flattened inputs."""

from __future__ import annotations

import math

import torch
from torch import nn

from nas_cli.models.init import initialize
from nas_cli.models.layers import linear


class MLP(nn.Sequential):
    """``depth`` hidden layers of ``width`` units: Linear (DropConnect if ``dropconnect`` > 0),
    optional BatchNorm, ReLU, optional dropout; then a plain linear classifier."""

    def __init__(
        self,
        in_shape,
        num_classes: int,
        width: int = 256,
        depth: int = 2,
        dropout: float = 0.0,
        dropconnect: float = 0.0,
        batchnorm: bool = False,
        init: str = "default",
    ):
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

    def hidden_layers(self) -> list[nn.Linear]:
        """The hidden linear layers, input side first (every Linear but the classifier)."""
        return [m for m in self if isinstance(m, nn.Linear)][:-1]

    def summary_figures(self) -> dict[str, float]:
        """Figures for the run's summary: ``hidden_unit_distance``, the mean over hidden layers of the mean
        Euclidean distance between two units' incoming weights (a row of W, with its bias). 0 means every
        unit of a layer is the same function (zeros / constant init: the symmetry was never broken)."""
        layers = self.hidden_layers()
        if not layers:
            return {}
        return {"hidden_unit_distance": sum(unit_distance(m) for m in layers) / len(layers)}


@torch.no_grad()
def unit_distance(layer: nn.Linear) -> float:
    """Mean pairwise Euclidean distance between the rows of ``[W | b]`` (float64; 0 for a single unit)."""
    rows = layer.weight.detach().double().flatten(1)
    if layer.bias is not None:
        rows = torch.cat([rows, layer.bias.detach().double()[:, None]], dim=1)
    if len(rows) < 2:
        return 0.0
    return float(torch.pdist(rows.cpu()).mean())
