"""Box geometry for detection: areas, IoU, GIoU and CIoU, pairwise and paired, and the GIoU / CIoU losses.

Boxes are float ``(x1, y1, x2, y2)`` in pixels, x to the right, y down; a real box has ``x2 > x1`` and ``y2 > y1``.
Everything is differentiable. "Pairwise" functions take ``[N, 4]`` and ``[M, 4]`` and return ``[N, M]``; "paired"
ones compare box ``i`` with box ``i`` over any leading dims (``[..., 4]`` and ``[..., 4]``, broadcast) and return
``[...]``. A small ``eps`` in every denominator keeps degenerate (zero-area) boxes finite in value and gradient:
two identical points have IoU 0 rather than 0/0. It is far below a pixel's area, so on real boxes the values match
``torchvision.ops`` to float precision.
"""

from __future__ import annotations

import math

import torch

from nas_cli.errors import UserError

EPS = 1e-7  # the same guard torchvision's box losses use
REDUCTIONS = ("none", "mean", "sum")


def box_area(boxes: torch.Tensor) -> torch.Tensor:
    """Area of each box, ``[..., 4] -> [...]``. Inverted boxes (x2 < x1) give a negative area, as in torchvision."""
    return (boxes[..., 2] - boxes[..., 0]) * (boxes[..., 3] - boxes[..., 1])


def _overlap(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Intersection and union areas of paired boxes (broadcast over leading dims)."""
    w = (torch.minimum(a[..., 2], b[..., 2]) - torch.maximum(a[..., 0], b[..., 0])).clamp(min=0)
    h = (torch.minimum(a[..., 3], b[..., 3]) - torch.maximum(a[..., 1], b[..., 1])).clamp(min=0)
    inter = w * h
    return inter, box_area(a) + box_area(b) - inter


def _enclosing(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Width and height of the smallest box enclosing each pair."""
    w = torch.maximum(a[..., 2], b[..., 2]) - torch.minimum(a[..., 0], b[..., 0])
    h = torch.maximum(a[..., 3], b[..., 3]) - torch.minimum(a[..., 1], b[..., 1])
    return w, h


def paired_iou(a: torch.Tensor, b: torch.Tensor, eps: float = EPS) -> torch.Tensor:
    """IoU of box ``a[..., i]`` with box ``b[..., i]``: intersection / (union + eps)."""
    inter, union = _overlap(a, b)
    return inter / (union + eps)


def paired_giou(a: torch.Tensor, b: torch.Tensor, eps: float = EPS) -> torch.Tensor:
    """Generalized IoU (Rezatofighi et al. 2019): IoU - (enclosing area - union) / enclosing area, in [-1, 1].

    Unlike IoU it still says how far apart two disjoint boxes are, so its loss has a gradient there.
    """
    inter, union = _overlap(a, b)
    cw, ch = _enclosing(a, b)
    enclosing = cw * ch
    return inter / (union + eps) - (enclosing - union) / (enclosing + eps)


def paired_ciou(a: torch.Tensor, b: torch.Tensor, eps: float = EPS) -> torch.Tensor:
    """Complete IoU (Zheng et al. 2020): IoU - rho^2 / c^2 - alpha * v.

    rho is the distance between the centres, c the enclosing box's diagonal, v = 4/pi^2 (atan(w_b/h_b) -
    atan(w_a/h_a))^2 measures how the aspect ratios differ, and alpha = v / (1 - IoU + v) weighs it. alpha is a
    constant to autograd, as in the paper (its gradient analysis treats it so) and torchvision. ``a`` is the
    prediction and ``b`` the target, though the value is symmetric. Widths and heights enter the aspect term
    clamped at ``eps``: a zero-height box would otherwise divide by zero in w/h.
    """
    inter, union = _overlap(a, b)
    iou = inter / (union + eps)
    cw, ch = _enclosing(a, b)
    diagonal2 = cw**2 + ch**2 + eps
    dx = (a[..., 0] + a[..., 2] - b[..., 0] - b[..., 2]) / 2
    dy = (a[..., 1] + a[..., 3] - b[..., 1] - b[..., 3]) / 2
    centre2 = dx**2 + dy**2

    def aspect(box: torch.Tensor) -> torch.Tensor:
        w = (box[..., 2] - box[..., 0]).clamp(min=eps)
        h = (box[..., 3] - box[..., 1]).clamp(min=eps)
        return torch.atan(w / h)

    v = (4 / math.pi**2) * (aspect(b) - aspect(a)) ** 2
    with torch.no_grad():
        alpha = v / (1 - iou + v + eps)
    return iou - centre2 / diagonal2 - alpha * v


def box_iou(a: torch.Tensor, b: torch.Tensor, eps: float = EPS) -> torch.Tensor:
    """Pairwise IoU, ``[N, 4] x [M, 4] -> [N, M]``."""
    return paired_iou(a[:, None, :], b[None, :, :], eps)


def generalized_box_iou(a: torch.Tensor, b: torch.Tensor, eps: float = EPS) -> torch.Tensor:
    """Pairwise GIoU, ``[N, 4] x [M, 4] -> [N, M]``."""
    return paired_giou(a[:, None, :], b[None, :, :], eps)


def _reduce(loss: torch.Tensor, reduction: str) -> torch.Tensor:
    if reduction == "none":
        return loss
    if reduction == "sum":
        return loss.sum()
    if reduction == "mean":
        # no boxes (an image without objects): 0 with a graph, not the NaN of an empty mean
        return loss.mean() if loss.numel() else loss.sum() * 0.0
    raise UserError(f"box loss reduction must be one of {', '.join(REDUCTIONS)}, got {reduction!r}")


def giou_loss(pred: torch.Tensor, target: torch.Tensor, reduction: str = "none", eps: float = EPS) -> torch.Tensor:
    """1 - GIoU of paired boxes, in [0, 2]; ``reduction``: none | mean | sum."""
    return _reduce(1 - paired_giou(pred, target, eps), reduction)


def ciou_loss(pred: torch.Tensor, target: torch.Tensor, reduction: str = "none", eps: float = EPS) -> torch.Tensor:
    """1 - CIoU of paired boxes (prediction first); ``reduction``: none | mean | sum."""
    return _reduce(1 - paired_ciou(pred, target, eps), reduction)
