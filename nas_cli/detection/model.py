"""A small one-stage detector: anchor-free, one detection scale.

Why anchor-free (FCOS, Tian et al. 2019; YOLOX, Ge et al. 2021): every cell of the output grid predicts
the distances from its centre to the four sides of a box, an objectness logit and class logits. There
are no anchor shapes to tune to a dataset, one prediction per cell, and the target assignment
(``nas_cli.detection.assign``) is a rule on cell centres a test can check by hand. Why one scale: the
data this project ships has objects of 12-28 px on 64x64 images, which one grid at stride 4 (16x16
cells, several cells per object) covers; ``stride=8`` halves the grid for larger images or objects.

Backbone: the project's residual blocks (``nas_cli.models.resnet.BasicBlock``) down to stride 8, and a
top-down merge of the stride-8 features into the stride-4 ones (an FPN step) where the head reads
them. Head: decoupled as in YOLOX: one branch for classes, one for box and objectness.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from nas_cli.errors import UserError
from nas_cli.models.resnet import BasicBlock, conv_bn

STRIDES = (4, 8)
PRIOR = 0.01  # initial objectness and class probability (RetinaNet's prior): a stable start with few positives


class DetectorOutput(NamedTuple):
    """Per cell of the grid, flattened row by row: P = grid height x width."""

    cls: torch.Tensor  # [B, P, K] class logits
    obj: torch.Tensor  # [B, P] objectness logits
    boxes: torch.Tensor  # [B, P, 4] decoded boxes, xyxy pixels
    centers: torch.Tensor  # [P, 2] cell centres (x, y) in pixels
    stride: int


def _conv_bn_relu(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(*conv_bn(cin, cout, 3, stride, True), nn.ReLU(inplace=True))


class Detector(nn.Module):
    """Anchor-free detector on ``in_shape`` images with ``num_classes`` classes.

    Args:
        width: channels after the stem; the stages have width, 2x and 4x.
        stride: the detection grid's stride in pixels, 4 or 8.
        head_width: channels of each head branch (default: 2 x width).
    """

    def __init__(self, in_shape, num_classes: int, width: int = 32, stride: int = 4, head_width: int | None = None):
        super().__init__()
        if stride not in STRIDES:
            raise UserError(f"model.stride={stride}: use one of {list(STRIDES)}")
        channels, height, width_px = in_shape
        if height % 8 or width_px % 8:
            raise UserError(f"detect needs image sides divisible by 8, got {height}x{width_px}")
        self.stride, self.num_classes = int(stride), int(num_classes)
        w, hw = int(width), int(head_width or 2 * width)
        self.stem = _conv_bn_relu(channels, w, stride=2)  # stride 2
        self.stage4 = nn.Sequential(BasicBlock(w, 2 * w, stride=2), BasicBlock(2 * w, 2 * w))  # stride 4
        self.stage8 = nn.Sequential(BasicBlock(2 * w, 4 * w, stride=2), BasicBlock(4 * w, 4 * w))  # stride 8
        self.lateral = nn.Conv2d(4 * w, 2 * w, 1)  # stride-8 features brought to the stride-4 width
        self.merge = _conv_bn_relu(2 * w if stride == 4 else 4 * w, hw)
        self.cls_branch = _conv_bn_relu(hw, hw)
        self.reg_branch = _conv_bn_relu(hw, hw)
        self.cls_out = nn.Conv2d(hw, num_classes, 1)
        self.box_out = nn.Conv2d(hw, 4, 1)
        self.obj_out = nn.Conv2d(hw, 1, 1)
        bias = -math.log((1 - PRIOR) / PRIOR)
        for head in (self.cls_out, self.obj_out):
            assert head.bias is not None  # made with one: nn.Conv2d's default
            nn.init.constant_(head.bias, bias)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        c4 = self.stage4(self.stem(x))
        c8 = self.stage8(c4)
        if self.stride == 8:
            return self.merge(c8)
        top_down = F.interpolate(self.lateral(c8), size=c4.shape[-2:], mode="nearest")
        return self.merge(c4 + top_down)

    def forward(self, x: torch.Tensor) -> DetectorOutput:
        f = self.features(x)
        batch, _, gh, gw = f.shape
        reg = self.reg_branch(f)
        cls = self.cls_out(self.cls_branch(f)).flatten(2).transpose(1, 2)  # [B, P, K]
        obj = self.obj_out(reg).flatten(1)  # [B, P]
        ltrb = F.softplus(self.box_out(reg).float()).flatten(2).transpose(1, 2) * self.stride  # [B, P, 4] px
        centers = grid_centers(gh, gw, self.stride, f.device)
        boxes = torch.cat([centers - ltrb[..., :2], centers + ltrb[..., 2:]], dim=-1)
        return DetectorOutput(cls, obj, boxes, centers, self.stride)


def grid_centers(height: int, width: int, stride: int, device=None) -> torch.Tensor:
    """Cell centres (x, y) in pixels, row by row: cell (i, j) covers [j s, (j+1) s) x [i s, (i+1) s)."""
    ys, xs = torch.meshgrid(torch.arange(height, device=device), torch.arange(width, device=device), indexing="ij")
    return (torch.stack([xs, ys], dim=-1).reshape(-1, 2).float() + 0.5) * stride
