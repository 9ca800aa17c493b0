"""A small convolutional network: the default model, quick on a CPU."""

from __future__ import annotations

from torch import nn

from nas_cli.errors import UserError
from nas_cli.models.init import initialize
from nas_cli.models.layers import FMP_RATIO, FractionalMaxPool, check_fmp_ratio, linear

POOLS = ("max", "fractional")


def conv_block(cin: int, cout: int, batchnorm: bool) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=1, bias=not batchnorm),
        nn.BatchNorm2d(cout) if batchnorm else nn.Identity(),
        nn.ReLU(inplace=True),
    )


def pool_layer(pool: str, ratio: float = FMP_RATIO, name: str = "pool") -> nn.Module:
    """2x2 max-pooling (halves each side), or fractional max-pooling by ``ratio`` in (1, 2)
    (each side n becomes floor(n / ratio); random regions while training)."""
    if pool not in POOLS:
        raise UserError(f"model.pool={pool} is not one of {', '.join(POOLS)}")
    return nn.MaxPool2d(2) if pool == "max" else FractionalMaxPool(ratio, name=name)


def check_pooled_sizes(in_shape, pools) -> None:
    """Follow the image side through the (size-keeping convs and the) pools; a UserError names
    the first pool whose input is too small, instead of a shape error deep inside a forward.
    ``pools``: (name, layer) pairs in order."""
    if len(in_shape) != 3:
        raise UserError(f"model=cnn needs image inputs (channels, height, width), got shape {tuple(in_shape)}")
    h, w = in_shape[1:]
    for name, pool in pools:
        if isinstance(pool, FractionalMaxPool):
            h, w = pool.output_size(h, w)
        elif min(h, w) < 2:
            raise UserError(f"{name}: a {h}x{w} input is too small for 2x2 max-pooling; use larger inputs")
        else:
            h, w = h // 2, w // 2


class SmallCNN(nn.Module):
    """Two conv stages (``width``, ``2 x width`` channels), each followed by a pooling layer, then a
    hidden linear layer.

    The features are pooled to 4 x 4 before the head, so any input whose sides survive both
    pools works: >= 4 x 4 with 2x2 max-pooling, >= 3 x 3 with fractional max-pooling by
    ``fmp_ratio`` (Graham's sqrt(2) by default); smaller inputs are a UserError naming the pool.
    """

    def __init__(
        self,
        in_shape,
        num_classes: int,
        width: int = 32,
        hidden: int = 128,
        batchnorm: bool = True,
        dropout: float = 0.0,
        dropconnect: float = 0.0,
        pool: str = "max",
        init: str = "default",
        fmp_ratio: float = FMP_RATIO,
    ):
        super().__init__()
        check_fmp_ratio(fmp_ratio)
        names = ["features.1 (pool 1)", "features.3 (pool 2)"]  # their paths in self.features
        pools = [pool_layer(pool, fmp_ratio, name) for name in names]
        check_pooled_sizes(in_shape, zip(names, pools))
        self.features = nn.Sequential(
            conv_block(in_shape[0], width, batchnorm),
            pools[0],
            conv_block(width, 2 * width, batchnorm),
            pools[1],
            nn.AdaptiveAvgPool2d(4),
        )
        self.head = nn.Sequential(
            nn.Flatten(),
            linear(2 * width * 16, hidden, dropconnect=dropconnect),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout) if dropout > 0 else nn.Identity(),
            nn.Linear(hidden, num_classes),
        )
        initialize(self, init)

    def forward(self, x):
        return self.head(self.features(x))
