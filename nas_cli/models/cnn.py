"""A small convolutional network: the default model, quick on a CPU."""

from __future__ import annotations

from torch import nn


def conv_block(cin: int, cout: int, batchnorm: bool) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=1, bias=not batchnorm),
        nn.BatchNorm2d(cout) if batchnorm else nn.Identity(),
        nn.ReLU(inplace=True),
    )


class SmallCNN(nn.Module):
    """Two conv stages (``width``, ``2 x width`` channels) with 2x2 max-pooling, then a hidden linear layer.

    Inputs of any size >= 4 x 4 work: the features are pooled to 4 x 4 before the head.
    """

    def __init__(self, in_shape, num_classes: int, width: int = 32, hidden: int = 128, batchnorm: bool = True,
                 dropout: float = 0.0):
        super().__init__()
        self.features = nn.Sequential(
            conv_block(in_shape[0], width, batchnorm), nn.MaxPool2d(2),
            conv_block(width, 2 * width, batchnorm), nn.MaxPool2d(2),
            nn.AdaptiveAvgPool2d(4),
        )
        self.head = nn.Sequential(
            nn.Flatten(), nn.Linear(2 * width * 16, hidden), nn.ReLU(inplace=True),
            nn.Dropout(dropout) if dropout > 0 else nn.Identity(), nn.Linear(hidden, num_classes),
        )

    def forward(self, x):
        return self.head(self.features(x))
