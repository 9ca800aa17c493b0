"""The detector's parts against hand computations: target assignment on a hand-drawn grid, the three loss
terms on two boxes, the decoded boxes, and the engine logging each term apart."""

from __future__ import annotations

import math

import pytest
import torch

from nas_cli.detection.assign import assign
from nas_cli.detection.losses import DetectionLoss, detection_terms
from nas_cli.detection.model import Detector, grid_centers
from nas_cli.errors import UserError


def test_assignment_on_a_hand_drawn_grid():
    """A 32x32 image at stride 8: a 4x4 grid whose cell centres are 4, 12, 20, 28 on each axis; cell p = 4 row + col.

    A = [2, 2, 22, 14] (area 240, centre (12, 8)): centres inside it are x in {4, 12, 20}, y in {4, 12}, all within
    1.5 strides (12 px) of its centre: cells 0, 1, 2, 4, 5, 6.
    B = [10, 10, 18, 18] (area 64): only centre (12, 12), cell 5, which A also claims: the smaller box, B, takes it.
    C = [25, 25, 27, 27] holds no cell centre: it gets the cell nearest its centre (26, 26), cell 15 = (28, 28).
    A padding row (class -1) with a box over the whole image claims nothing.
    """
    targets = torch.tensor(
        [[[0, 2, 2, 22, 14], [1, 10, 10, 18, 18], [2, 25, 25, 27, 27], [-1, 0, 0, 32, 32]]], dtype=torch.float32
    )
    matched = assign(grid_centers(4, 4, 8), targets, stride=8, radius=1.5)
    expected = torch.full((1, 16), -1)
    expected[0, [0, 1, 2, 4, 6]] = 0
    expected[0, 5] = 1
    expected[0, 15] = 2
    assert torch.equal(matched, expected)


def test_centre_sampling_radius_limits_a_large_box():
    """A box over the whole 32x32 image, centre (16, 16), radius 0.5 stride (4 px): no centre is within 4 px on both
    axes (the nearest are 4 px away, and the bound is strict) except by the nearest-cell rule: one cell."""
    targets = torch.tensor([[[0, 0, 0, 32, 32]]], dtype=torch.float32)
    matched = assign(grid_centers(4, 4, 8), targets, stride=8, radius=0.5)
    assert (matched >= 0).sum() == 1
    assert int((matched[0] >= 0).nonzero()) == 5  # (12, 12): the first of the four centres nearest (16, 16)
    # 1.5 strides = 12 px: centres 12 and 20 are within (4 px), 4 and 28 are not (12 px, strict): the middle 2x2
    assert (assign(grid_centers(4, 4, 8), targets, stride=8, radius=1.5) >= 0).sum() == 4
    assert (assign(grid_centers(4, 4, 8), targets, stride=8, radius=1.6) >= 0).sum() == 16  # 12.8 px: all


def test_loss_terms_against_a_hand_computation_on_two_boxes():
    """One ground truth [0, 0, 2, 2] of class 1; two cells, the first learns it and predicts [1, 1, 3, 3].

    IoU = 1/7 (intersection 1, union 4 + 4 - 1); the enclosing box [0, 0, 3, 3] has area 9, so
    GIoU = 1/7 - (9 - 7)/9 = -5/63 and the box loss is 1 + 5/63 (mean over the one positive).
    Objectness: BCE(2.0, 1/7) at the positive (target = its IoU) + BCE(-1.0, 0) at the other, over 1 positive.
    Class: BCE(0.5, 0) + BCE(1.0, 1) at the positive; the negative cell's class logits do not count.
    """
    targets = torch.tensor([[[1, 0, 0, 2, 2]]], dtype=torch.float32)
    boxes = torch.tensor([[[1, 1, 3, 3], [5, 5, 9, 9]]], dtype=torch.float32)
    obj = torch.tensor([[2.0, -1.0]])
    cls = torch.tensor([[[0.5, 1.0], [3.0, -2.0]]])
    matched = torch.tensor([[0, -1]])
    terms = detection_terms(cls, obj, boxes, targets, matched)

    def bce(logit, t):
        p = 1 / (1 + math.exp(-logit))
        return -(t * math.log(p) + (1 - t) * math.log(1 - p))

    assert terms["box"].item() == pytest.approx(1 + 5 / 63, abs=1e-5)
    assert terms["obj"].item() == pytest.approx(bce(2.0, 1 / 7) + bce(-1.0, 0), abs=1e-5)
    assert terms["cls"].item() == pytest.approx(bce(0.5, 0) + bce(1.0, 1), abs=1e-5)


def test_objectness_target_carries_no_gradient_to_the_box():
    """The IoU in the objectness target is a target: with the box and class weights at 0, the predicted box gets
    no gradient at all."""
    targets = torch.tensor([[[0, 0, 0, 2, 2]]], dtype=torch.float32)
    boxes = torch.tensor([[[1.0, 1, 3, 3]]], requires_grad=True)
    obj = torch.tensor([[0.3]], requires_grad=True)
    terms = detection_terms(torch.zeros(1, 1, 1), obj, boxes, targets, torch.tensor([[0]]))
    terms["obj"].backward()
    assert boxes.grad is None or torch.all(boxes.grad == 0)
    assert obj.grad.abs().item() > 0


def test_detector_decodes_boxes_around_its_cell_centres():
    """Every decoded box contains its own cell centre (distances to the sides are positive), on the grid the
    stride says, and the loss is finite with the three terms named."""
    torch.manual_seed(0)
    model = Detector((3, 32, 32), num_classes=3, width=8)
    out = model(torch.randn(2, 3, 32, 32))
    assert out.cls.shape == (2, 64, 3) and out.obj.shape == (2, 64) and out.boxes.shape == (2, 64, 4)
    assert torch.equal(out.centers, grid_centers(8, 8, 4))
    c = out.centers.unsqueeze(0)
    assert torch.all(out.boxes[..., :2] < c) and torch.all(out.boxes[..., 2:] > c)
    targets = torch.tensor(
        [[[0, 4, 4, 20, 20], [-1, 0, 0, 0, 0]], [[2, 10, 2, 30, 12], [1, 0, 16, 8, 30]]], dtype=torch.float32
    )
    loss, logits, parts = DetectionLoss()(model, torch.randn(2, 3, 32, 32), targets)
    assert logits is None and set(parts) == {"box", "obj", "cls"} and torch.isfinite(loss)
    w = (5.0, 1.0, 1.0)
    assert loss.item() == pytest.approx(sum(wi * parts[k].item() for wi, k in zip(w, ("box", "obj", "cls"))), rel=1e-6)


def test_bad_detector_and_loss_settings_are_one_line_errors():
    with pytest.raises(UserError, match="model.stride"):
        Detector((3, 32, 32), 2, stride=16)
    with pytest.raises(UserError, match="divisible by 8"):
        Detector((3, 30, 30), 2)
    with pytest.raises(UserError, match="loss.box"):
        DetectionLoss(box="iou")
