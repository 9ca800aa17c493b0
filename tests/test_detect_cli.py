"""``nas-cli detect`` end to end on the generated shapes: the run record, a mAP well above a trivial baseline, NMS
and soft-NMS side by side, predict mode drawing boxes, and one-line errors."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
from helpers import in_process
from PIL import Image

from nas_cli.data.shapes import save_images, shapes
from nas_cli.detection.evaluate import CocoMeanAP, ground_truth

SMALL = [
    "data.n_train=800",
    "data.n_val=100",
    "data.max_objects=3",
    "trainer.epochs=4",
    "model.width=16",
    "progress=false",
    "device=cpu",
    "threads=1",
]


def trivial_map50(n_val: int = 100) -> float:
    """mAP@0.5 of a detector that ignores the image: every class, a box of the training boxes' mean size at each
    of the 16 positions of a 4x4 grid, all scored 0.5. What any learned detector must beat by far."""
    data = shapes(n_train=800, n_val=n_val, max_objects=3)
    y = data.train.y
    real = y[..., 0] >= 0
    w = (y[..., 3] - y[..., 1])[real].mean()
    h = (y[..., 4] - y[..., 2])[real].mean()
    centres = (torch.arange(4) + 0.5) * 16
    cy, cx = torch.meshgrid(centres, centres, indexing="ij")
    grid = torch.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], -1).reshape(-1, 4)
    k = data.num_classes
    guess = {
        "boxes": grid.repeat(k, 1),
        "labels": torch.arange(k).repeat_interleave(len(grid)),
        "scores": torch.full((k * len(grid),), 0.5),
    }
    metric = CocoMeanAP()
    for _, targets in data.val:
        truth = ground_truth(targets)
        metric.update([guess] * len(truth), truth)
    return metric.compute()["map_50"]


@pytest.mark.slow
def test_detect_trains_reports_and_predicts(tmp_path):
    run = tmp_path / "run"
    assert in_process("detect", *SMALL, f"hydra.run.dir={run}") == 0
    summary = json.loads((run / "summary.json").read_text())
    metrics = pd.read_csv(run / "metrics.csv")
    # the three loss terms logged apart, training and validation; no accuracy columns for a detector
    for split in ("train", "val"):
        assert {f"{split}_loss_box", f"{split}_loss_obj", f"{split}_loss_cls"} <= set(metrics.columns)
    assert "train_acc" not in metrics and "val_acc" not in metrics
    # NMS and soft-NMS side by side, every epoch and in the summary
    for key in ("val_map50_nms", "val_map_nms", "val_map50_softnms", "val_map_softnms"):
        assert key in metrics and summary[key] == pytest.approx(metrics[key].iloc[-1])
    assert summary["status"] == "ok" and summary["best_val_map50_nms"] == pytest.approx(metrics["val_map50_nms"].max())
    # learned: 4 epochs on 800 images reach about 0.8 mAP@0.5 here; the image-blind baseline scores 0.003
    baseline = trivial_map50()
    assert baseline < 0.1
    assert summary["val_map50_nms"] > 0.6 > baseline + 0.5
    assert summary["val_map_nms"] < summary["val_map50_nms"]  # mAP@[.5:.95] is the stricter figure
    assert metrics["val_map50_nms"].iloc[-1] > metrics["val_map50_nms"].iloc[0]
    assert (run / "detections.png").is_file() and (run / "detector.json").is_file()

    # predict: the validation images as files, boxes drawn on each, detections as JSON in pixels of the file
    images = tmp_path / "images"
    data = shapes(n_train=1, n_val=6, max_objects=3)
    x = torch.cat(
        [(xb * data.val.std + data.val.mean).clamp(0, 1).mul(255).round().to(torch.uint8) for xb, _ in data.val]
    )
    save_images(x, images)
    out = tmp_path / "predict"
    assert (
        in_process(
            "detect",
            "mode=predict",
            f"source={run}",
            f"images={images}",
            "progress=false",
            "device=cpu",
            f"hydra.run.dir={out}",
        )
        == 0
    )
    found = json.loads((out / "detections.json").read_text())
    assert [r["image"] for r in found] == sorted(p.name for p in images.iterdir())
    assert sum(len(r["detections"]) for r in found) >= 6
    for record in found:
        for d in record["detections"]:
            x1, y1, x2, y2 = d["box"]
            assert 0 <= d["score"] <= 1 and x2 > x1 and y2 > y1 and d["class"] in data.classes
    drawn = Image.open(out / "predictions" / found[0]["image"])
    assert drawn.size == (256, 256)  # 64 px enlarged 4x for legible labels
    plain = np.array(Image.open(images / found[0]["image"]).convert("RGB"))
    enlarged = plain.repeat(4, 0).repeat(4, 1)
    assert (np.array(drawn.convert("RGB")) != enlarged).any()  # boxes drawn
    assert json.loads((out / "summary.json").read_text())["images"] == 6


@pytest.mark.parametrize(
    "args, message",
    [
        (["data=digits"], "data=digits is an option of `nas-cli train"),
        (["mode=predict"], "needs images=FOLDER"),
        (["mode=predict", "images=/nonexistent"], "is not a folder"),
        (["mode=serve"], "mode=serve: expected train or predict"),
        (["checkpoint=/x"], "checkpoint: nas-cli detect has no such key"),
    ],
)
def test_detect_bad_input_is_one_line(args, message, tmp_path, capsys):
    assert in_process("detect", *args, "progress=false", f"hydra.run.dir={tmp_path / 'run'}") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err


def test_detection_data_is_refused_by_train(tmp_path, capsys):
    assert in_process("train", "data=shapes", f"hydra.run.dir={tmp_path / 'run'}") == 2
    assert "data=shapes is an option of `nas-cli detect`" in capsys.readouterr().err


def test_predict_needs_a_finished_run(tmp_path, capsys):
    images = tmp_path / "images"
    save_images(torch.zeros(1, 3, 64, 64, dtype=torch.uint8), images)
    assert (
        in_process(
            "detect",
            "mode=predict",
            f"source={tmp_path}",
            f"images={images}",
            "progress=false",
            f"hydra.run.dir={tmp_path / 'run'}",
        )
        == 2
    )
    assert "has no detector.json" in capsys.readouterr().err
