"""CIFAR-style ResNet-18: a 3x3 stem (no max-pool), four stages of two basic blocks.

``width`` is the stem's channel count (64 is the standard network); stages use
width, 2w, 4w, 8w channels. Any channel count and inputs of 8 x 8 or larger work.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import nn

from nas_cli.models.init import initialize
from nas_cli.models.layers import DropPath, check_prob


def conv_bn(cin: int, cout: int, kernel: int, stride: int, batchnorm: bool) -> tuple[nn.Conv2d, nn.Module]:
    """A conv and its BatchNorm; without BatchNorm an Identity, and the conv keeps its bias."""
    conv = nn.Conv2d(cin, cout, kernel, stride=stride, padding=kernel // 2, bias=not batchnorm)
    return conv, (nn.BatchNorm2d(cout) if batchnorm else nn.Identity())


class BasicBlock(nn.Module):
    """Two 3x3 convs plus a shortcut; ``drop_path`` is this block's stochastic-depth probability."""

    expansion = 1

    def __init__(self, cin: int, cout: int, stride: int = 1, batchnorm: bool = True, drop_path: float = 0.0):
        super().__init__()
        self.conv1, self.bn1 = conv_bn(cin, cout, 3, stride, batchnorm)
        self.conv2, self.bn2 = conv_bn(cout, cout, 3, 1, batchnorm)
        self.drop_path = DropPath(drop_path)  # no parameters: state-dict keys are unchanged
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(*conv_bn(cin, cout, 1, stride, batchnorm))

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.drop_path(self.bn2(self.conv2(out)))
        return F.relu(out + self.shortcut(x))


class ResNet(nn.Module):
    """``drop_path`` is the last block's drop probability; block l of L drops with ``drop_path * l / L``."""

    def __init__(
        self,
        in_shape,
        num_classes: int,
        width: int = 64,
        blocks=(2, 2, 2, 2),
        batchnorm: bool = True,
        dropout: float = 0.0,
        drop_path: float = 0.0,
        init: str = "default",
    ):
        super().__init__()
        if len(in_shape) != 3 or min(in_shape[1:]) < 8:
            raise ValueError(f"ResNet needs images of at least 8x8, got input shape {tuple(in_shape)}")
        check_prob("drop_path", drop_path)
        self.stem = nn.Sequential(*conv_bn(in_shape[0], width, 3, 1, batchnorm), nn.ReLU(inplace=True))
        stages, cin, total, index = [], width, sum(blocks), 0
        for i, n in enumerate(blocks):
            cout = width * 2**i
            stage = []
            for j in range(n):
                index += 1  # linear decay rule: deeper blocks are dropped more often
                stage.append(
                    BasicBlock(
                        cin if j == 0 else cout,
                        cout,
                        stride=(1 if i == 0 or j else 2),
                        batchnorm=batchnorm,
                        drop_path=drop_path * index / total,
                    )
                )
            stages.append(nn.Sequential(*stage))
            cin = cout
        self.stages = nn.Sequential(*stages)
        # Dropout shares slot 1 with Flatten so the classifier keeps its state-dict key (head.2)
        drop = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.head = nn.Sequential(
            nn.AdaptiveAvgPool2d(1), nn.Sequential(nn.Flatten(), drop), nn.Linear(cin, num_classes)
        )
        initialize(self, init)

    def forward(self, x):
        return self.head(self.stages(self.stem(x)))


def resnet18(
    in_shape,
    num_classes: int,
    width: int = 64,
    batchnorm: bool = True,
    dropout: float = 0.0,
    drop_path: float = 0.0,
    init: str = "default",
) -> ResNet:
    return ResNet(
        in_shape,
        num_classes,
        width,
        blocks=(2, 2, 2, 2),
        batchnorm=batchnorm,
        dropout=dropout,
        drop_path=drop_path,
        init=init,
    )
