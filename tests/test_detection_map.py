"""detect's COCO mAP (``nas_cli.detection.evaluate.CocoMeanAP``) against pycocotools' ``COCOeval`` run the documented
way (load, evaluate, accumulate, summarize) on the same detections: random ones over several images, classes and
crowd regions, and a constructed case where a crowd region decides the figure. Crowd rows read from a COCO folder
come back as crowds."""

from __future__ import annotations

import contextlib
import io
import json

import numpy as np
import pytest
import torch
from PIL import Image

from nas_cli.data.coco import coco, crowd_class
from nas_cli.detection.evaluate import CocoMeanAP, ground_truth


def reference(found: list[dict], truth: list[dict]) -> tuple[float, float]:
    """COCOeval's stats[0] (mAP@[.5:.95]) and stats[1] (mAP@0.5), default parameters, from COCO dicts written here."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    def xywh(box):
        x1, y1, x2, y2 = (float(v) for v in box)
        return [x1, y1, x2 - x1, y2 - y1]

    images = [{"id": i + 1} for i in range(len(truth))]
    gts, dts = [], []
    for i, (d, t) in enumerate(zip(found, truth)):
        for box, label, crowd in zip(t["boxes"].double(), t["labels"], t["iscrowd"]):
            b = xywh(box)
            gts.append(
                {
                    "id": len(gts) + 1,
                    "image_id": i + 1,
                    "category_id": int(label),
                    "bbox": b,
                    "area": b[2] * b[3],
                    "iscrowd": int(crowd),
                }
            )
        for box, label, score in zip(d["boxes"].double(), d["labels"], d["scores"].double()):
            dts.append({"image_id": i + 1, "category_id": int(label), "bbox": xywh(box), "score": float(score)})
    labels = sorted({a["category_id"] for a in gts + dts})
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO()
        gt.dataset = {"images": images, "annotations": gts, "categories": [{"id": c} for c in labels]}
        gt.createIndex()
        dt = gt.loadRes(dts)
        e = COCOeval(gt, dt, "bbox")
        e.evaluate()
        e.accumulate()
        e.summarize()
    return float(e.stats[0]), float(e.stats[1])


def ours(found, truth) -> tuple[float, float]:
    metric = CocoMeanAP()
    metric.update(found, truth)
    result = metric.compute()
    return result["map"], result["map_50"]


def random_case(seed: int, images: int = 12, classes: int = 4):
    """Ground truth (some of it crowds) and detections: jittered copies of the objects, duplicates, wrong classes
    and clutter, float32 as the detector gives them, scores rounded so ties occur."""
    g = torch.Generator().manual_seed(seed)
    found, truth = [], []
    for _ in range(images):
        n = int(torch.randint(0, 6, (1,), generator=g))
        xy = torch.rand(n, 2, generator=g) * 80
        wh = 4 + torch.rand(n, 2, generator=g) * 30
        boxes = torch.cat([xy, xy + wh], 1)
        labels = torch.randint(0, classes, (n,), generator=g)
        crowd = (torch.rand(n, generator=g) < 0.2).long()
        truth.append({"boxes": boxes, "labels": labels, "iscrowd": crowd})
        copies = boxes.repeat(2, 1) + torch.randn(2 * n, 4, generator=g) * wh.repeat(2, 2) * 0.15
        copy_labels = labels.repeat(2)
        wrong = torch.rand(2 * n, generator=g) < 0.15
        copy_labels = torch.where(wrong, torch.randint(0, classes, (2 * n,), generator=g), copy_labels)
        m = int(torch.randint(0, 8, (1,), generator=g))
        cxy = torch.rand(m, 2, generator=g) * 80
        clutter = torch.cat([cxy, cxy + 4 + torch.rand(m, 2, generator=g) * 30], 1)
        det_boxes = torch.cat([copies, clutter]).float()
        det_labels = torch.cat([copy_labels, torch.randint(0, classes, (m,), generator=g)])
        scores = (torch.rand(len(det_boxes), generator=g) * 20).round() / 20
        found.append({"boxes": det_boxes, "scores": scores.float(), "labels": det_labels})
    return found, truth


@pytest.mark.parametrize("seed", range(6))
def test_map_equals_pycocotools_on_random_detections(seed):
    found, truth = random_case(seed)
    assert sum(int(t["iscrowd"].sum()) for t in truth) > 0  # the cases hold crowds
    got, want = ours(found, truth), reference(found, truth)
    assert got[0] == pytest.approx(want[0], abs=1e-9) and got[1] == pytest.approx(want[1], abs=1e-9)
    assert 0 < want[0] < want[1] < 1  # a figure in between, not a degenerate 0 or 1


def test_map_over_batches_is_the_map_of_all_images():
    found, truth = random_case(7, images=10)
    metric = CocoMeanAP()
    metric.update(found[:3], truth[:3])
    metric.update(found[3:], truth[3:])
    result = metric.compute()
    assert (result["map"], result["map_50"]) == pytest.approx(reference(found, truth), abs=1e-9)


def test_a_detection_on_a_crowd_region_is_neither_true_nor_false_positive():
    """One image, class 0: an object A = [0, 0, 10, 10] and a crowd region C = [20, 0, 60, 40].

    d1 (score 0.95) lies inside C: its crowd IoU is intersection / its own area = 1, so it is ignored. d2 (0.9)
    is A itself: the one true positive, at precision 1; d3 (0.5) is clutter. AP = 1 at every IoU threshold.
    Were C dropped, d1 would be a false positive ranked first: precision 1/2 at recall 1, AP = 0.5. Were C an
    ordinary object, d1 would still be a false positive (IoU 100/1600) and C a miss: AP below 0.5."""
    truth = [
        {
            "boxes": torch.tensor([[0.0, 0, 10, 10], [20, 0, 60, 40]]),
            "labels": torch.tensor([0, 0]),
            "iscrowd": torch.tensor([0, 1]),
        }
    ]
    found = [
        {
            "boxes": torch.tensor([[25.0, 5, 35, 15], [0, 0, 10, 10], [80, 80, 90, 90]]),
            "scores": torch.tensor([0.95, 0.9, 0.5]),
            "labels": torch.tensor([0, 0, 0]),
        }
    ]
    assert ours(found, truth) == pytest.approx(reference(found, truth), abs=1e-9)
    assert ours(found, truth) == pytest.approx((1.0, 1.0), abs=1e-9)  # 1 - 1e-16: COCOeval's tp / (tp + eps)
    dropped = [{k: v[:1] for k, v in truth[0].items()}]
    assert ours(found, dropped) == pytest.approx((0.5, 0.5), abs=0.01)  # COCO's 101-point sampling of 0.5
    assert ours(found, dropped) == pytest.approx(reference(found, dropped), abs=1e-9)
    ordinary = [{**truth[0], "iscrowd": torch.tensor([0, 0])}]
    assert ours(found, ordinary)[1] < 0.5
    assert ours(found, ordinary) == pytest.approx(reference(found, ordinary), abs=1e-9)


def test_crowd_rows_from_a_coco_folder_come_back_as_crowds(tmp_path):
    (tmp_path / "images").mkdir()
    Image.new("RGB", (20, 10)).save(tmp_path / "images" / "a.png")
    data = {
        "images": [{"id": 1, "file_name": "a.png"}],
        "categories": [{"id": 3}, {"id": 7}],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 7, "bbox": [2, 1, 4, 3]},
            {"id": 2, "image_id": 1, "category_id": 7, "bbox": [0, 0, 5, 5], "iscrowd": 1},
            {"id": 3, "image_id": 1, "category_id": 3, "bbox": [10, 2, 6, 6], "iscrowd": 1},
        ],
    }
    (tmp_path / "annotations.json").write_text(json.dumps(data))
    y = coco(tmp_path, image_size=[10, 20], val_size=0).train.y
    assert y[0, :, 0].tolist() == [1, crowd_class(1), crowd_class(0)] == [1, -3, -2]
    (gt,) = ground_truth(y)
    assert gt["labels"].tolist() == [1, 1, 0] and gt["iscrowd"].tolist() == [0, 1, 1]
    assert gt["boxes"].tolist() == [[2, 1, 6, 4], [0, 0, 5, 5], [10, 2, 16, 8]]
    # padding rows (class -1) are neither objects nor crowds
    padded = torch.cat([y, torch.tensor([[[-1.0, 0, 0, 0, 0]]])], 1)
    assert len(ground_truth(padded)[0]["labels"]) == 3
    assert np.isclose(crowd_class(crowd_class(2.0)), 2.0)
