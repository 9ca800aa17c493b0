"""The detector's training signal, in three terms logged apart (``train_loss_box``, ``_obj``, ``_cls``):

* box: GIoU loss (Rezatofighi et al. 2019), 1 - GIoU of each positive cell's box with its ground truth,
  or CIoU (Zheng et al. 2020) with ``box=ciou``; the mean over positives.
* objectness: binary cross-entropy of every cell's objectness against the IoU of its predicted box with
  its ground truth (0 for cells that learn no box), as YOLOv5 does (Ultralytics' ``utils/loss.py``:
  ``tobj[b, a, gj, gi] = iou``, the IoU detached and clamped at 0, with ``gr = 1.0`` the whole target is the
  IoU); the IoU is a target, so no gradient flows through it. YOLOX does not: its objectness target is 1 at
  positive cells (``obj_target = fg_mask``), and the IoU goes into its class target instead.
* class: binary cross-entropy of the positives' class logits against their one-hot class.

Objectness and class are summed and divided by the number of positives, as YOLOX normalises them, so
the many empty cells do not drown the few positives. ``DetectionLoss`` is the engine's ``loss_fn``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from nas_cli.detection.assign import assign
from nas_cli.detection.boxes import ciou_loss, giou_loss, paired_iou
from nas_cli.errors import UserError

BOX_LOSSES = {"giou": giou_loss, "ciou": ciou_loss}


class DetectionLoss:
    """``loss_fn(model, x, targets) -> (loss, None, {"box", "obj", "cls"})`` for ``Trainer.fit``.

    Args:
        box: ``giou`` | ``ciou``.
        box_weight, obj_weight, cls_weight: each term's weight in the total (YOLOX: 5, 1, 1).
        center_radius: the assignment's centre region, in strides (FCOS: 1.5).
    """

    def __init__(
        self,
        box: str = "giou",
        box_weight: float = 5.0,
        obj_weight: float = 1.0,
        cls_weight: float = 1.0,
        center_radius: float = 1.5,
    ):
        if box not in BOX_LOSSES:
            raise UserError(f"loss.box={box}: use one of {sorted(BOX_LOSSES)}")
        if min(box_weight, obj_weight, cls_weight) < 0 or center_radius <= 0:
            raise UserError("loss weights must be >= 0 and loss.center_radius > 0")
        self.box_loss = BOX_LOSSES[box]
        self.weights = (float(box_weight), float(obj_weight), float(cls_weight))
        self.center_radius = float(center_radius)

    def __call__(self, model: nn.Module, x: torch.Tensor, targets: torch.Tensor):
        out = model(x)
        matched = assign(out.centers, targets, out.stride, self.center_radius)
        terms = detection_terms(out.cls, out.obj, out.boxes, targets, matched, self.box_loss)
        wb, wo, wc = self.weights
        total = wb * terms["box"] + wo * terms["obj"] + wc * terms["cls"]
        return total, None, terms


def detection_terms(
    cls: torch.Tensor,
    obj: torch.Tensor,
    boxes: torch.Tensor,
    targets: torch.Tensor,
    matched: torch.Tensor,
    box_loss=giou_loss,
) -> dict[str, torch.Tensor]:
    """The three unweighted terms from raw outputs (``cls`` [B,P,K], ``obj`` [B,P], ``boxes`` [B,P,4]),
    padded ``targets`` [B,M,5] and the assignment ``matched`` [B,P]. Dense and masked: no host sync."""
    positive = matched >= 0
    gt = targets.gather(1, matched.clamp(min=0).unsqueeze(-1).expand(-1, -1, 5))  # [B, P, 5]
    gt_boxes, weight = gt[..., 1:].float(), positive.float()
    n = weight.sum().clamp(min=1.0)
    boxes = boxes.float()
    box = (box_loss(boxes, gt_boxes) * weight).sum() / n
    iou = paired_iou(boxes.detach(), gt_boxes).clamp(0, 1) * weight
    obj_term = F.binary_cross_entropy_with_logits(obj.float(), iou, reduction="sum") / n
    one_hot = F.one_hot(gt[..., 0].long().clamp(min=0), cls.shape[-1]).float()
    cls_term = (F.binary_cross_entropy_with_logits(cls.float(), one_hot, reduction="none").sum(-1) * weight).sum() / n
    return {"box": box, "obj": obj_term, "cls": cls_term}
