"""Box geometry (nas_cli.detection.boxes) against torchvision.ops and hand-computed cases."""

from __future__ import annotations

import pytest
import torch
import torchvision.ops as tvops

from nas_cli.detection.boxes import (
    box_area,
    box_iou,
    ciou_loss,
    generalized_box_iou,
    giou_loss,
    paired_ciou,
    paired_giou,
    paired_iou,
)
from nas_cli.errors import UserError


def random_boxes(n: int, seed: int, size: float = 100.0, dtype=torch.float64) -> torch.Tensor:
    """Real boxes (x2 > x1, y2 > y1) in a size x size image, many overlapping."""
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(n, 2, generator=g, dtype=dtype) * size
    wh = torch.rand(n, 2, generator=g, dtype=dtype) * size / 2 + 1
    return torch.cat([xy, xy + wh], dim=1)


@pytest.mark.parametrize("seed", [0, 1])
def test_pairwise_iou_and_giou_match_torchvision(seed):
    a, b = random_boxes(37, seed), random_boxes(23, seed + 100)
    torch.testing.assert_close(box_iou(a, b), tvops.box_iou(a, b), rtol=1e-6, atol=1e-9)
    torch.testing.assert_close(generalized_box_iou(a, b), tvops.generalized_box_iou(a, b), rtol=1e-6, atol=1e-9)
    torch.testing.assert_close(box_area(a), tvops.box_area(a))
    # paired = the diagonal of pairwise, over extra leading dims too
    c = random_boxes(23, seed + 7)
    torch.testing.assert_close(paired_iou(b, c), torch.diagonal(box_iou(b, c)))
    torch.testing.assert_close(
        paired_giou(b.view(1, 23, 4), c.view(1, 23, 4))[0], torch.diagonal(generalized_box_iou(b, c))
    )


@pytest.mark.parametrize(
    "ours, theirs", [(giou_loss, tvops.generalized_box_iou_loss), (ciou_loss, tvops.complete_box_iou_loss)]
)
@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
def test_losses_and_gradients_match_torchvision(ours, theirs, reduction):
    pred, target = random_boxes(64, 3), random_boxes(64, 4)
    pred[:8] = target[:8] + 0.5  # some near-perfect predictions, where the CIoU aspect term matters most
    p1, p2 = pred.clone().requires_grad_(), pred.clone().requires_grad_()
    t1, t2 = target.clone().requires_grad_(), target.clone().requires_grad_()
    mine, ref = ours(p1, t1, reduction=reduction), theirs(p2, t2, reduction=reduction)
    torch.testing.assert_close(mine, ref, rtol=1e-6, atol=1e-9)
    weights = torch.rand_like(mine)  # a non-uniform upstream gradient for "none"
    (mine * weights).sum().backward()
    (ref * weights).sum().backward()
    torch.testing.assert_close(p1.grad, p2.grad, rtol=1e-5, atol=1e-9)
    torch.testing.assert_close(t1.grad, t2.grad, rtol=1e-5, atol=1e-9)


def test_hand_computed_overlapping_pair():
    # [0,0,2,2] and [1,1,3,3]: intersection [1,1,2,2] = 1, union 4 + 4 - 1 = 7 -> IoU 1/7.
    # Enclosing box [0,0,3,3] = 9 -> GIoU = 1/7 - (9 - 7)/9 = 1/7 - 2/9.
    # CIoU: centres (1,1) and (2,2): rho^2 = 2; enclosing diagonal c^2 = 3^2 + 3^2 = 18; equal aspect ratios, v = 0
    # -> CIoU = 1/7 - 2/18 = 1/7 - 1/9.
    a = torch.tensor([[0.0, 0.0, 2.0, 2.0]], dtype=torch.float64)
    b = torch.tensor([[1.0, 1.0, 3.0, 3.0]], dtype=torch.float64)
    assert box_iou(a, b).item() == pytest.approx(1 / 7, rel=1e-6)
    assert generalized_box_iou(a, b).item() == pytest.approx(1 / 7 - 2 / 9, rel=1e-6)
    assert paired_ciou(a, b).item() == pytest.approx(1 / 7 - 1 / 9, rel=1e-6)
    assert giou_loss(a, b, reduction="sum").item() == pytest.approx(1 - (1 / 7 - 2 / 9), rel=1e-6)


def test_hand_computed_disjoint_pair_has_negative_giou_and_an_aspect_term():
    # [0,0,1,1] and [2,0,4,2]: no overlap -> IoU 0; union 1 + 4 = 5; enclosing [0,0,4,2] = 8
    # -> GIoU = 0 - (8 - 5)/8 = -3/8 < 0.
    # CIoU: centres (0.5,0.5) and (3,1): rho^2 = 2.5^2 + 0.5^2 = 6.5; c^2 = 4^2 + 2^2 = 20; both boxes are square
    # (atan(1) each) -> v = 0 -> CIoU = -6.5/20 = -0.325.
    a = torch.tensor([0.0, 0.0, 1.0, 1.0], dtype=torch.float64)
    b = torch.tensor([2.0, 0.0, 4.0, 2.0], dtype=torch.float64)
    assert paired_iou(a, b).item() == 0.0
    assert paired_giou(a, b).item() == pytest.approx(-3 / 8, rel=1e-6)
    assert paired_ciou(a, b).item() == pytest.approx(-0.325, rel=1e-6)
    # a 2x1 box against a 1x1 one at the same centre: IoU 1/2, rho = 0, v = 4/pi^2 (atan 2 - atan 1)^2,
    # alpha = v / (1 - 1/2 + v)
    c, d = (
        torch.tensor([0.0, 0.0, 2.0, 1.0], dtype=torch.float64),
        torch.tensor([0.5, 0.0, 1.5, 1.0], dtype=torch.float64),
    )
    v = 4 / torch.pi**2 * (torch.atan(torch.tensor(2.0)) - torch.pi / 4).item() ** 2
    assert paired_ciou(c, d).item() == pytest.approx(0.5 - v / (0.5 + v) * v, rel=1e-6)


@pytest.mark.parametrize("loss", [giou_loss, ciou_loss])
def test_degenerate_boxes_give_finite_losses_and_gradients(loss):
    # zero-area boxes: a point on a point, a line on a line, a point inside a real box, a zero-height prediction
    pred = torch.tensor(
        [[5.0, 5.0, 5.0, 5.0], [0.0, 0.0, 4.0, 0.0], [3.0, 3.0, 3.0, 3.0], [1.0, 2.0, 6.0, 2.0]], requires_grad=True
    )
    target = torch.tensor(
        [[5.0, 5.0, 5.0, 5.0], [0.0, 0.0, 4.0, 0.0], [0.0, 0.0, 6.0, 6.0], [1.0, 1.0, 6.0, 4.0]], requires_grad=True
    )
    value = loss(pred, target)
    assert torch.isfinite(value).all()
    bound = 2 if loss is giou_loss else 3  # GIoU >= -1; CIoU >= -2 (rho^2/c^2 <= 1, alpha * v <= 1)
    assert (value >= 0).all() and (value <= bound + 1e-6).all()
    value.sum().backward()
    assert torch.isfinite(pred.grad).all() and torch.isfinite(target.grad).all()


def test_empty_mean_is_zero_and_bad_reduction_is_a_user_error():
    empty = torch.zeros(0, 4, requires_grad=True)
    out = giou_loss(empty, empty.detach(), reduction="mean")
    assert out.item() == 0.0 and out.requires_grad
    with pytest.raises(UserError, match="reduction"):
        ciou_loss(empty, empty, reduction="avg")
