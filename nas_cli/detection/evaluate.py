"""From the detector's raw grid to detections, and their mean average precision.

A cell's score for its best class is sigmoid(objectness) x sigmoid(class logit) (YOLOX's score); the
``top_k`` best cells above ``score_threshold`` of each image are the candidates, which NMS (per class)
or soft-NMS (per class) then clean up.

mAP@0.5 and mAP@[.5:.95] are COCO's, computed by pycocotools' own ``COCOeval`` (``CocoMeanAP``): no hand-written
COCO evaluation here, and no wrapper in between. (torchmetrics' ``MeanAveragePrecision``, used before, passes
float32 recall and IoU thresholds, ``torch.linspace(...).tolist()``, to COCOeval instead of its float64
``np.linspace(.0, 1.00, 101)``: ``searchsorted(recall, thresholds, side="left")`` then lands one point off
wherever a recall equals a threshold, e.g. 1/5 or 3/10, and its mAP fell up to 0.0009 (mAP@0.5: 0.002) below
pycocotools'.) Crowd regions (COCO's ``iscrowd=1``) are ignore regions as in COCOeval: a detection matched to one
(IoU = intersection / the detection's area) counts neither as a true nor as a false positive.
"""

from __future__ import annotations

import contextlib
import io
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import torch

from nas_cli.data.coco import CROWD, crowd_class
from nas_cli.detection.model import DetectorOutput
from nas_cli.detection.nms import batched_nms, soft_nms_batch
from nas_cli.errors import UserError

METHODS = ("nms", "softnms")


@dataclass(frozen=True)
class Postprocess:
    """How raw predictions become detections (``postprocess.*`` in conf/detect.yaml)."""

    score_threshold: float = 0.05  # candidates below this score are dropped before NMS
    top_k: int = 200  # at most this many candidates per image enter NMS
    max_detections: int = 100  # detections kept per image (COCO evaluates 100)
    nms_iou: float = 0.5  # NMS: a box overlapping a kept box of its class by more is removed
    soft_method: str = "gaussian"  # soft-NMS decay: gaussian | linear
    soft_sigma: float = 0.5  # gaussian decay exp(-IoU^2 / sigma)
    soft_iou: float = 0.3  # linear decay applies from this IoU on
    soft_score_threshold: float = 0.001  # soft-NMS drops boxes whose decayed score falls below this

    def __post_init__(self):
        if not 0 <= self.score_threshold < 1 or not 0 < self.nms_iou <= 1:
            raise UserError("postprocess.score_threshold must be in [0, 1) and postprocess.nms_iou in (0, 1]")
        if self.top_k < 1 or self.max_detections < 1:
            raise UserError("postprocess.top_k and postprocess.max_detections must be 1 or more")


class Candidates(NamedTuple):
    """Each image's ``top_k`` best cells, best first, padded: ``valid`` marks those above the score threshold."""

    boxes: torch.Tensor  # [B, K, 4]
    scores: torch.Tensor  # [B, K]
    labels: torch.Tensor  # [B, K]
    valid: torch.Tensor  # [B, K]


def candidates(out: DetectorOutput, post: Postprocess) -> Candidates:
    scores, labels = (torch.sigmoid(out.obj.float()).unsqueeze(-1) * torch.sigmoid(out.cls.float())).max(-1)
    top, idx = scores.topk(min(post.top_k, scores.shape[1]), dim=1)
    boxes = out.boxes.float().gather(1, idx.unsqueeze(-1).expand(-1, -1, 4))
    return Candidates(boxes, top, labels.gather(1, idx), top > post.score_threshold)


def _best(boxes, scores, labels, post: Postprocess) -> dict[str, torch.Tensor]:
    order = scores.argsort(descending=True)[: post.max_detections]
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
        kept, decayed = soft_nms_batch(
            c.boxes,
            c.scores,
            iou_threshold=post.soft_iou,
            sigma=post.soft_sigma,
            method=post.soft_method,
            score_threshold=post.soft_score_threshold,
            idxs=c.labels,
            valid=c.valid,
        )
        return [_best(b[k], d[k], lab[k], post) for b, d, lab, k in zip(c.boxes, decayed, c.labels, kept)]
    raise UserError(f"postprocess method {method!r}: use one of {list(METHODS)}")


def ground_truth(targets: torch.Tensor) -> list[dict[str, torch.Tensor]]:
    """Padded targets [B, M, 5] as per-image dicts: ``boxes`` (xyxy), ``labels`` and ``iscrowd`` (a crowd region,
    stored with class ``crowd_class(c)`` by ``nas_cli.data.coco``, comes back as class ``c`` with ``iscrowd`` 1)."""
    cls = targets[..., 0]
    crowd = cls <= CROWD
    real = (cls >= 0) | crowd
    labels = torch.where(crowd, crowd_class(cls), cls).long()
    return [
        {"boxes": t[r][:, 1:].float(), "labels": lab[r], "iscrowd": c[r].long()}
        for t, r, lab, c in zip(targets, real, labels, crowd)
    ]


class CocoMeanAP:
    """COCO's mAP@[.5:.95] and mAP@0.5 over many images, by pycocotools' ``COCOeval`` (iouType bbox).

    ``update(found, truth)`` takes a batch: per image, detections ``{"boxes" xyxy, "scores", "labels"}`` and ground
    truth ``{"boxes" xyxy, "labels", "iscrowd" (optional)}``; ``compute()`` returns ``{"map", "map_50"}``, COCOeval's
    ``stats[0]`` and ``stats[1]`` (area "all", 100 detections per image and class; -1 when no class has a
    non-crowd object, as COCOeval says). Boxes go to COCO's [x, y, w, h] in float64; a class counts when it has
    at least one non-crowd object in the images (COCOeval: categories with none are -1 and left out of the mean).
    Only the "all" area range and 100 detections are evaluated (the figures reported; the same values as in
    COCOeval's default run, at a quarter of the work).
    """

    def __init__(self) -> None:
        self.images: list[tuple[np.ndarray, ...]] = []

    def update(self, found: list[dict[str, torch.Tensor]], truth: list[dict[str, torch.Tensor]]) -> None:
        for d, t in zip(found, truth, strict=True):
            crowd = t.get("iscrowd", torch.zeros(len(t["labels"]), dtype=torch.long))
            self.images.append(
                tuple(
                    v.detach().cpu().numpy()
                    for v in (
                        d["boxes"].double(),
                        d["scores"].double(),
                        d["labels"],
                        t["boxes"].double(),
                        t["labels"],
                        crowd,
                    )
                )
            )

    def coco_dicts(self) -> tuple[dict, dict]:
        """The ground truth and the detections as COCO datasets (image ids 1.., annotation ids 1..)."""
        gts: list[dict] = []
        dts: list[dict] = []
        classes: set[int] = set()
        for image_id, (boxes, scores, labels, gt_boxes, gt_labels, crowd) in enumerate(self.images, 1):
            for box, label, is_crowd in zip(gt_boxes, gt_labels, crowd):
                gts.append(_annotation(len(gts) + 1, image_id, box, int(label), iscrowd=int(bool(is_crowd))))
            for box, score, label in zip(boxes, scores, labels):
                dts.append({**_annotation(len(dts) + 1, image_id, box, int(label)), "score": float(score)})
            classes.update(int(c) for c in gt_labels)
            classes.update(int(c) for c in labels)
        images = [{"id": i} for i in range(1, len(self.images) + 1)]
        categories = [{"id": c} for c in sorted(classes)]
        return (
            {"images": images, "annotations": gts, "categories": categories},
            {"images": images, "annotations": dts, "categories": categories},
        )

    def compute(self) -> dict[str, float]:
        from pycocotools.coco import COCO
        from pycocotools.cocoeval import COCOeval

        truth, found = self.coco_dicts()
        if not any(not a["iscrowd"] for a in truth["annotations"]):
            return {"map": -1.0, "map_50": -1.0}
        with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints its progress
            gt, dt = COCO(), COCO()
            gt.dataset, dt.dataset = truth, found
            gt.createIndex()
            dt.createIndex()
            e = COCOeval(gt, dt, iouType="bbox")
            e.params.areaRng, e.params.areaRngLbl, e.params.maxDets = [[0**2, 1e5**2]], ["all"], [100]
            e.evaluate()
            e.accumulate()
        precision = e.eval["precision"][:, :, :, 0, -1]  # [T iou, R recall, K class]
        at50 = precision[np.flatnonzero(np.isclose(e.params.iouThrs, 0.5))[0]]
        return {"map": _mean_present(precision), "map_50": _mean_present(at50)}


def _annotation(ann_id: int, image_id: int, box: np.ndarray, label: int, iscrowd: int = 0) -> dict:
    """One COCO annotation from an xyxy float64 box: bbox [x, y, w, h], area w h (COCOeval's loadRes rule)."""
    x1, y1, x2, y2 = (float(v) for v in box)
    w, h = x2 - x1, y2 - y1
    return {
        "id": ann_id,
        "image_id": image_id,
        "category_id": label,
        "bbox": [x1, y1, w, h],
        "area": w * h,
        "iscrowd": iscrowd,
    }


def _mean_present(precision: np.ndarray) -> float:
    """COCOeval.summarize's mean: over the entries > -1 (-1: a class without objects), or -1 if none."""
    present = precision[precision > -1]
    return float(np.mean(present)) if present.size else -1.0


@torch.inference_mode()
def mean_average_precision(
    model, loader, device: torch.device, post: Postprocess, methods=METHODS, prefix: str = "val_"
) -> dict[str, float]:
    """COCO mAP@0.5 and mAP@[.5:.95] of ``model`` on ``loader``, for each post-processing method side by side:
    ``{prefix}map50_<method>``, ``{prefix}map_<method>`` (``CocoMeanAP``: pycocotools' COCOeval)."""
    metrics = {m: CocoMeanAP() for m in methods}
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
        figures[f"{prefix}map50_{method}"] = result["map_50"]
        figures[f"{prefix}map_{method}"] = result["map"]
    return figures
