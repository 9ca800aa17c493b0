"""From the detector's raw grid to detections, and their mean average precision.

A cell's score for its best class is sigmoid(objectness) x sigmoid(class logit) (YOLOX's score); the
``top_k`` best cells above ``score_threshold`` of each image are the candidates, which NMS (per class)
or soft-NMS (per class) then clean up. mAP@0.5 and mAP@[.5:.95] are COCO's, computed by torchmetrics'
``MeanAveragePrecision`` (pycocotools underneath): no hand-written COCO evaluation here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch

from nas_cli.detection.model import DetectorOutput
from nas_cli.detection.nms import batched_nms, soft_nms_batch
from nas_cli.errors import UserError

METHODS = ("nms", "softnms")


@dataclass(frozen=True)
class Postprocess:
    """How raw predictions become detections (``postprocess.*`` in conf/detect.yaml)."""

    score_threshold: float = 0.05    # candidates below this score are dropped before NMS
    top_k: int = 200                 # at most this many candidates per image enter NMS
    max_detections: int = 100        # detections kept per image (COCO evaluates 100)
    nms_iou: float = 0.5             # NMS: a box overlapping a kept box of its class by more is removed
    soft_method: str = "gaussian"    # soft-NMS decay: gaussian | linear
    soft_sigma: float = 0.5          # gaussian decay exp(-IoU^2 / sigma)
    soft_iou: float = 0.3            # linear decay applies from this IoU on
    soft_score_threshold: float = 0.001  # soft-NMS drops boxes whose decayed score falls below this

    def __post_init__(self):
        if not 0 <= self.score_threshold < 1 or not 0 < self.nms_iou <= 1:
            raise UserError("postprocess.score_threshold must be in [0, 1) and postprocess.nms_iou in (0, 1]")
        if self.top_k < 1 or self.max_detections < 1:
            raise UserError("postprocess.top_k and postprocess.max_detections must be 1 or more")


class Candidates(NamedTuple):
    """Each image's ``top_k`` best cells, best first, padded: ``valid`` marks those above the score threshold."""

    boxes: torch.Tensor   # [B, K, 4]
    scores: torch.Tensor  # [B, K]
    labels: torch.Tensor  # [B, K]
    valid: torch.Tensor   # [B, K]


def candidates(out: DetectorOutput, post: Postprocess) -> Candidates:
    scores, labels = (torch.sigmoid(out.obj.float()).unsqueeze(-1) * torch.sigmoid(out.cls.float())).max(-1)
    top, idx = scores.topk(min(post.top_k, scores.shape[1]), dim=1)
    boxes = out.boxes.float().gather(1, idx.unsqueeze(-1).expand(-1, -1, 4))
    return Candidates(boxes, top, labels.gather(1, idx), top > post.score_threshold)


def _best(boxes, scores, labels, post: Postprocess) -> dict[str, torch.Tensor]:
    order = scores.argsort(descending=True)[:post.max_detections]
    return {"boxes": boxes[order], "scores": scores[order], "labels": labels[order]}


def detect(out: DetectorOutput, post: Postprocess, method: str = "nms") -> list[dict[str, torch.Tensor]]:
    """Detections of every image of a batch after ``method`` (nms | softnms, both per class), best first,
    at most ``max_detections`` an image."""
    return clean(candidates(out, post), post, method)


def clean(c: Candidates, post: Postprocess, method: str) -> list[dict[str, torch.Tensor]]:
    """A batch's candidates after ``method`` (see ``detect``)."""
    if method == "nms":
        found = []
        for boxes, scores, labels, valid in zip(*c):
            boxes, scores, labels = boxes[valid], scores[valid], labels[valid]
            keep = batched_nms(boxes, scores, labels, post.nms_iou)
            found.append(_best(boxes[keep], scores[keep], labels[keep], post))
        return found
    if method == "softnms":  # all images at once: the selection loop runs once for the batch
        k = max(int(c.valid.sum(1).max()), 1)  # candidates come best first: the columns past k are all padding
        c = Candidates(*(t[:, :k] for t in c))
        kept, decayed = soft_nms_batch(c.boxes, c.scores, iou_threshold=post.soft_iou, sigma=post.soft_sigma,
                                       method=post.soft_method, score_threshold=post.soft_score_threshold,
                                       idxs=c.labels, valid=c.valid)
        return [_best(b[k], d[k], lab[k], post) for b, d, lab, k in zip(c.boxes, decayed, c.labels, kept)]
    raise UserError(f"postprocess method {method!r}: use one of {list(METHODS)}")


def ground_truth(targets: torch.Tensor) -> list[dict[str, torch.Tensor]]:
    """Padded targets [B, M, 5] as torchmetrics' per-image dicts."""
    real = targets[..., 0] >= 0
    return [{"boxes": t[r][:, 1:].float(), "labels": t[r][:, 0].long()} for t, r in zip(targets, real)]


@torch.inference_mode()
def mean_average_precision(model, loader, device: torch.device, post: Postprocess,
                           methods=METHODS, prefix: str = "val_") -> dict[str, float]:
    """COCO mAP@0.5 and mAP@[.5:.95] of ``model`` on ``loader``, for each post-processing method side by side:
    ``{prefix}map50_<method>``, ``{prefix}map_<method>``."""
    from torchmetrics.detection import MeanAveragePrecision

    metrics = {m: MeanAveragePrecision(box_format="xyxy", iou_type="bbox") for m in methods}
    model.eval()
    for x, y in loader:
        cands = candidates(model(x.to(device, non_blocking=True)), post)  # once, for every method
        truth = [{k: v.cpu() for k, v in t.items()} for t in ground_truth(y)]
        for method, metric in metrics.items():
            found = [{k: v.cpu() for k, v in d.items()} for d in clean(cands, post, method)]
            metric.update(found, truth)
    figures = {}
    for method, metric in metrics.items():
        result = metric.compute()
        figures[f"{prefix}map50_{method}"] = float(result["map_50"])
        figures[f"{prefix}map_{method}"] = float(result["map"])
    return figures
