"""A small convolutional network: the default model, quick on a CPU."""

from __future__ import annotations

from torch import nn

from nas_cli.errors import UserError
from nas_cli.models.init import initialize
from nas_cli.models.layers import FractionalMaxPool, linear

POOLS = ("max", "fractional")


def conv_block(cin: int, cout: int, batchnorm: bool) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=1, bias=not batchnorm),
        nn.BatchNorm2d(cout) if batchnorm else nn.Identity(),
        nn.ReLU(inplace=True),
    )


def pool_layer(pool: str) -> nn.Module:
    """Halve each side: 2x2 max-pooling, or fractional max-pooling (random regions while training)."""
    if pool not in POOLS:
        raise UserError(f"model.pool={pool} is not one of {', '.join(POOLS)}")
    return nn.MaxPool2d(2) if pool == "max" else FractionalMaxPool()


class SmallCNN(nn.Module):
    """Two conv stages (``width``, ``2 x width`` channels) with 2x2 pooling, then a hidden linear layer.

    Inputs of any size >= 4 x 4 work: the features are pooled to 4 x 4 before the head.
    """

    def __init__(self, in_shape, num_classes: int, width: int = 32, hidden: int = 128, batchnorm: bool = True,
                 dropout: float = 0.0, dropconnect: float = 0.0, pool: str = "max", init: str = "default"):
        super().__init__()
        self.features = nn.Sequential(
            conv_block(in_shape[0], width, batchnorm), pool_layer(pool),
            conv_block(width, 2 * width, batchnorm), pool_layer(pool),
            nn.AdaptiveAvgPool2d(4),
        )
        self.head = nn.Sequential(
            nn.Flatten(), linear(2 * width * 16, hidden, dropconnect=dropconnect), nn.ReLU(inplace=True),
            nn.Dropout(dropout) if dropout > 0 else nn.Identity(), nn.Linear(hidden, num_classes),
        )
        initialize(self, init)

    def forward(self, x):
        return self.head(self.features(x))
