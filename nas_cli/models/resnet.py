"""CIFAR-style ResNet-18: a 3x3 stem (no max-pool), four stages of two basic blocks.

``width`` is the stem's channel count (64 is the standard network); stages use
width, 2w, 4w, 8w channels. Any channel count and inputs of 8 x 8 or larger work.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import nn


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, cin: int, cout: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Identity()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class ResNet(nn.Module):
    def __init__(self, in_shape, num_classes: int, width: int = 64, blocks=(2, 2, 2, 2)):
        super().__init__()
        if len(in_shape) != 3 or min(in_shape[1:]) < 8:
            raise ValueError(f"ResNet needs images of at least 8x8, got input shape {tuple(in_shape)}")
        self.stem = nn.Sequential(nn.Conv2d(in_shape[0], width, 3, padding=1, bias=False), nn.BatchNorm2d(width),
                                  nn.ReLU(inplace=True))
        stages, cin = [], width
        for i, n in enumerate(blocks):
            cout = width * 2**i
            stages.append(nn.Sequential(*[BasicBlock(cin if j == 0 else cout, cout, stride=(1 if i == 0 or j else 2))
                                          for j in range(n)]))
            cin = cout
        self.stages = nn.Sequential(*stages)
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(cin, num_classes))

    def forward(self, x):
        return self.head(self.stages(self.stem(x)))


def resnet18(in_shape, num_classes: int, width: int = 64) -> ResNet:
    return ResNet(in_shape, num_classes, width, blocks=(2, 2, 2, 2))
