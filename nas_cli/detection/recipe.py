"""``nas-cli detect``'s recipes: train a small one-stage detector on the one engine, or predict with one.

``train`` fits ``nas_cli.detection.model.Detector`` with the detection losses (``nas_cli.detection.losses``)
and, after every epoch, measures mAP@0.5 and mAP@[.5:.95] on the validation set with NMS and with soft-NMS
side by side. ``predict`` draws the detections of a trained run on every image of a folder and writes them
as JSON.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import torch
from hydra.utils import instantiate
from torch import nn

from nas_cli.data.bundle import DataBundle, TensorLoader
from nas_cli.detection.evaluate import METHODS, Postprocess, mean_average_precision
from nas_cli.detection.losses import DetectionLoss
from nas_cli.detection.predict import DetectorMeta, detection_grid, image_files, predict_images
from nas_cli.engine.latency import n_params
from nas_cli.engine.trainer import Trainer
from nas_cli.errors import UserError
from nas_cli.runs import checkpoint, saved_config
from nas_cli.runs.files import DETECTIONS, DETECTIONS_PLOT, DETECTOR, PREDICTIONS, WEIGHTS
from nas_cli.runs.options import RunOptions
from nas_cli.runs.record import atomic_write

log = logging.getLogger(__name__)
COMMAND = "detect"
SCORE = "val_map50_nms"  # the figure that stands for accuracy: progress bar, best_<score>
MAP_KEYS = [f"val_{kind}_{method}" for method in METHODS for kind in ("map50", "map")]
HEADLINE = ["train_loss", "val_loss", *MAP_KEYS]
PREDICT_HEADLINE = ["images", "detections"]


@dataclass
class DetectParts:
    """What ``mode=train`` builds: ``data(seed=)``, ``model(in_shape=, num_classes=)`` (and ``model_config``, the
    plain ``model`` node that ``detector.json`` keeps for ``mode=predict``), ``trainer(device=, progress=)``,
    ``optimizer(params=)``, the loss and ``schedule()``."""

    data: Callable[..., DataBundle]
    model: Callable[..., nn.Module]
    model_config: dict[str, Any]
    trainer: Callable[..., Trainer]
    optimizer: Callable[..., torch.optim.Optimizer]
    loss: DetectionLoss
    schedule: Callable[[], Any]


def train(parts: DetectParts, opts: RunOptions, post: Postprocess) -> dict:
    """Fit the detector on the one engine, measuring mAP (NMS and soft-NMS) after every epoch."""
    data = parts.data(seed=opts.seed)
    classes = check_detection_data(data)
    model = parts.model(in_shape=data.in_shape, num_classes=data.num_classes).to(opts.device)
    optimizer = parts.optimizer(params=model.parameters())
    trainer = parts.trainer(device=opts.device, progress=opts.progress)
    run = opts.run(COMMAND, budget={"trainer.epochs": trainer.epochs}, headline=HEADLINE)
    loader = cast(TensorLoader, data.train)  # detection data is in memory (data=shapes, data=coco)
    assert loader.mean is not None and loader.std is not None  # both normalize their images
    mean, std = (loader.mean.flatten().tolist(), loader.std.flatten().tolist())
    if run.record.write:
        DetectorMeta(parts.model_config, data.in_shape, classes, mean, std).save(run.dir / DETECTOR)
    log.info(
        f"Detector ({n_params(model):,} parameters, stride {model.stride}) on {data.name} "
        f"({data.in_shape}, {data.num_classes} classes: {', '.join(classes)}), {opts.device}; "
        f"run folder {run.dir}"
    )

    def figures() -> dict:
        rows = run.record.rows
        final = {k: rows[-1][k] for k in MAP_KEYS if rows and k in rows[-1]}
        return {**final, "classes": data.classes, "val_split": data.val_split, "postprocess": vars(post)}

    summary = trainer.fit(
        model,
        optimizer,
        data.train,
        data.val,
        run=run,
        schedule=parts.schedule(),
        generator=data.generator,
        loss_fn=parts.loss,
        score=SCORE,
        figures=figures,
        on_epoch_end=lambda row: mean_average_precision(model, data.val, trainer.device, post),
    )
    if summary["status"] == "ok" and run.record.write:
        detection_grid(model, data.val, classes, mean, std, trainer.device, post, run.dir / DETECTIONS_PLOT)
    log.info(
        "validation mAP@0.5 / mAP@[.5:.95]: NMS "
        + " / ".join(f"{summary.get(k, float('nan')):.4f}" for k in MAP_KEYS[:2])
        + ", soft-NMS "
        + " / ".join(f"{summary.get(k, float('nan')):.4f}" for k in MAP_KEYS[2:])
    )
    return summary


def check_detection_data(data: DataBundle) -> list[str]:
    """Detection needs boxes: targets [N, M, 5] and class names (``data=shapes`` or ``data=coco``); the names."""
    y = getattr(data.train, "y", None)
    if y is None or y.dim() != 3 or y.shape[-1] != 5 or not data.classes:
        raise UserError(f"data {data.name} has no boxes: detect trains on detection data (data=shapes or data=coco)")
    if len(cast(TensorLoader, data.val).y) == 0:  # in memory, as the training set
        raise UserError("no validation images (data.val_size=0?): detect measures mAP on them every epoch")
    return data.classes


def predict(source_arg: str | None, images: str, method: str, opts: RunOptions, post: Postprocess) -> dict:
    """Detections of a trained run (``source_arg``) on every image of the folder ``images``, as a run of its own."""
    files = image_files(images)
    source = source_folder(source_arg)
    meta = DetectorMeta.load(source / DETECTOR)
    # the run may come from elsewhere: its detector.json is data, rebuilt only from nas-cli's own targets
    node = saved_config.checked_node({"model": meta.model}, "model", f"source={source_arg}: {source / DETECTOR}")
    model = instantiate({**node, "in_shape": meta.in_shape, "num_classes": len(meta.classes)})
    try:
        model.load_state_dict(checkpoint.load(source / WEIGHTS, map_location="cpu")["model"])
    except (KeyError, RuntimeError) as ex:
        raise UserError(f"source={source_arg}: its {WEIGHTS} does not fit its {DETECTOR}") from ex
    model.to(opts.device)
    if method not in METHODS:
        raise UserError(f"method={method}: use one of {list(METHODS)}")
    run = opts.run(COMMAND, headline=PREDICT_HEADLINE)
    with run:
        records = predict_images(model, meta, files, run.dir / PREDICTIONS, post, method, opts.device)
        atomic_write(run.dir / DETECTIONS, lambda tmp: Path(tmp).write_text(json.dumps(records, indent=1)))
        run.figures = lambda: {
            "mode": "predict",
            "source": str(source),
            "method": method,
            "images": len(records),
            "detections": sum(len(r["detections"]) for r in records),
        }
    log.info(
        f"{len(records)} images, {run.summary['detections']} detections: {run.dir / PREDICTIONS}/, "
        f"{run.dir / DETECTIONS}"
    )
    return run.summary


def source_folder(source: str | None) -> Path:
    """``source=``: a finished detect run folder (its model.pt and detector.json), or its model.pt."""
    if not source:
        raise UserError("mode=predict needs source=RUN_FOLDER (a finished `nas-cli detect` run)")
    path = Path(source)
    folder = path if path.is_dir() else path.parent
    for name in (DETECTOR, WEIGHTS):
        if not (folder / name).is_file():
            raise UserError(f"source={source}: {folder} has no {name} (a finished `nas-cli detect` run has both)")
    return folder
