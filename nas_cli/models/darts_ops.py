"""The DARTS candidate operations (Liu et al., 2019), shared by the supernet and the derived network."""

from __future__ import annotations

import torch
from torch import nn

PRIMITIVES = [
    "none",
    "max_pool_3x3",
    "avg_pool_3x3",
    "skip_connect",
    "sep_conv_3x3",
    "sep_conv_5x5",
    "dil_conv_3x3",
    "dil_conv_5x5",
]


class ReLUConvBN(nn.Sequential):
    def __init__(self, c_in: int, c_out: int, kernel: int, stride: int, padding: int, affine: bool = True):
        super().__init__(
            nn.ReLU(inplace=False),
            nn.Conv2d(c_in, c_out, kernel, stride, padding, bias=False),
            nn.BatchNorm2d(c_out, affine=affine),
        )


class DilConv(nn.Sequential):
    def __init__(self, c_in, c_out, kernel, stride, padding, dilation, affine=True):
        super().__init__(
            nn.ReLU(inplace=False),
            nn.Conv2d(c_in, c_in, kernel, stride, padding, dilation=dilation, groups=c_in, bias=False),
            nn.Conv2d(c_in, c_out, 1, bias=False),
            nn.BatchNorm2d(c_out, affine=affine),
        )


class SepConv(nn.Sequential):
    """Two stacked depthwise-separable convolutions (the first one strided)."""

    def __init__(self, c_in, c_out, kernel, stride, padding, affine=True):
        super().__init__(
            DilConv(c_in, c_in, kernel, stride, padding, 1, affine), DilConv(c_in, c_out, kernel, 1, padding, 1, affine)
        )


class Zero(nn.Module):
    def __init__(self, stride: int):
        super().__init__()
        self.stride = stride

    def forward(self, x):
        x = x if self.stride == 1 else x[:, :, :: self.stride, :: self.stride]
        return x * 0.0


class FactorizedReduce(nn.Module):
    """Halve the resolution with two offset 1x1 stride-2 convolutions (odd sizes padded)."""

    def __init__(self, c_in: int, c_out: int, affine: bool = True):
        super().__init__()
        self.relu = nn.ReLU(inplace=False)
        self.conv1 = nn.Conv2d(c_in, c_out // 2, 1, stride=2, bias=False)
        self.conv2 = nn.Conv2d(c_in, c_out - c_out // 2, 1, stride=2, bias=False)
        self.bn = nn.BatchNorm2d(c_out, affine=affine)

    def forward(self, x):
        x = self.relu(x)
        if x.shape[-1] % 2 or x.shape[-2] % 2:
            x = nn.functional.pad(x, (0, x.shape[-1] % 2, 0, x.shape[-2] % 2))
        return self.bn(torch.cat([self.conv1(x), self.conv2(x[:, :, 1:, 1:] if x.shape[-1] > 1 else x)], dim=1))


def _pool(kind: str, c: int, stride: int, affine: bool, bn: bool) -> nn.Module:
    pool = nn.MaxPool2d(3, stride, 1) if kind == "max" else nn.AvgPool2d(3, stride, 1, count_include_pad=False)
    return nn.Sequential(pool, nn.BatchNorm2d(c, affine=False)) if bn else pool


def make_op(name: str, c: int, stride: int, affine: bool = True, pool_bn: bool = False) -> nn.Module:
    """One candidate op on ``c`` channels; ``pool_bn`` adds a non-affine BatchNorm after pools (supernet)."""
    if name == "none":
        return Zero(stride)
    if name == "max_pool_3x3":
        return _pool("max", c, stride, affine, pool_bn)
    if name == "avg_pool_3x3":
        return _pool("avg", c, stride, affine, pool_bn)
    if name == "skip_connect":
        return nn.Identity() if stride == 1 else FactorizedReduce(c, c, affine)
    if name.startswith("sep_conv_"):
        k = int(name[-1])
        return SepConv(c, c, k, stride, k // 2, affine)
    if name.startswith("dil_conv_"):
        k = int(name[-1])
        return DilConv(c, c, k, stride, k - 1, 2, affine)
    raise ValueError(f"unknown DARTS op '{name}': use one of {', '.join(PRIMITIVES)}")


def preprocess(c_pp: int, c_p: int, c: int, reduction_prev: bool, affine: bool) -> tuple[nn.Module, nn.Module]:
    """The two 1x1 convs that bring a cell's two inputs to ``c`` channels (and one resolution)."""
    pre0 = FactorizedReduce(c_pp, c, affine) if reduction_prev else ReLUConvBN(c_pp, c, 1, 1, 0, affine)
    return pre0, ReLUConvBN(c_p, c, 1, 1, 0, affine)


def reduction_layers(layers: int) -> set[int]:
    """Cells that halve the resolution: at 1/3 and 2/3 of the depth."""
    return {layers // 3, 2 * layers // 3} if layers >= 3 else set()


def stem(in_channels: int, c: int) -> nn.Module:
    return nn.Sequential(nn.Conv2d(in_channels, c, 3, padding=1, bias=False), nn.BatchNorm2d(c))


def build_cells(layers: int, init_channels: int, stem_multiplier: int, make_cell) -> tuple[nn.ModuleList, int]:
    """The cell stack shared by the supernet and the discrete network.

    ``make_cell(c_pp, c_p, c_curr, reduction, reduction_prev)`` returns ``(cell, out_channels)``;
    channels double at each reduction cell. Returns the cells and the last cell's output channels.
    """
    c_pp, c_p, c_curr = stem_multiplier * init_channels, stem_multiplier * init_channels, init_channels
    cells, reduction_prev, reductions = nn.ModuleList(), False, reduction_layers(layers)
    for i in range(layers):
        reduction = i in reductions
        if reduction:
            c_curr *= 2
        cell, out_channels = make_cell(c_pp, c_p, c_curr, reduction, reduction_prev)
        cells.append(cell)
        reduction_prev = reduction
        c_pp, c_p = c_p, out_channels
    return cells, c_p
