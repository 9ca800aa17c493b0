"""``nas-cli detect``: train a small one-stage detector on the one engine, or predict with a trained one.

``mode=train`` fits ``nas_cli.detection.model.Detector`` with the detection losses
(``nas_cli.detection.losses``) and, after every epoch, measures mAP@0.5 and mAP@[.5:.95] on the validation
set with NMS and with soft-NMS side by side. ``mode=predict source=RUN images=FOLDER`` draws the detections
of a trained run on every image of a folder and writes them as JSON.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from nas_cli.data.bundle import DataBundle
from nas_cli.detection.evaluate import METHODS, Postprocess, mean_average_precision
from nas_cli.detection.losses import DetectionLoss
from nas_cli.detection.predict import DetectorMeta, detection_grid, image_files, predict_images
from nas_cli.engine.device import seed_everything
from nas_cli.engine.latency import n_params
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


def task(cfg: DictConfig) -> dict:
    if cfg.mode not in ("train", "predict"):
        raise UserError(f"mode={cfg.mode}: use train or predict")
    opts = RunOptions.from_config(cfg)
    seed_everything(opts.seed)
    post = Postprocess(**OmegaConf.to_container(cfg.postprocess, resolve=True))
    if cfg.mode == "predict":
        return predict(cfg, opts, post)
    return train(cfg, opts, post)


def train(cfg: DictConfig, opts: RunOptions, post: Postprocess) -> dict:
    data = instantiate(cfg.data, seed=opts.seed)
    check_detection_data(data)
    model = instantiate(cfg.model, in_shape=data.in_shape, num_classes=data.num_classes).to(opts.device)
    optimizer = instantiate(cfg.optim)(params=model.parameters())
    trainer = instantiate(cfg.trainer, device=opts.device, progress=opts.progress)
    loss: DetectionLoss = instantiate(cfg.loss)
    run = opts.run(COMMAND, budget={"trainer.epochs": trainer.epochs}, headline=HEADLINE)
    mean, std = (data.train.mean.flatten().tolist(), data.train.std.flatten().tolist())
    if run.record.write:
        DetectorMeta(OmegaConf.to_container(cfg.model, resolve=True), data.in_shape, data.classes, mean, std).save(
            run.dir / DETECTOR
        )
    log.info(
        f"Detector ({n_params(model):,} parameters, stride {model.stride}) on {data.name} "
        f"({data.in_shape}, {data.num_classes} classes: {', '.join(data.classes)}), {opts.device}; "
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
        schedule=instantiate(cfg.sched),
        generator=data.generator,
        loss_fn=loss,
        score=SCORE,
        figures=figures,
        on_epoch_end=lambda row: mean_average_precision(model, data.val, trainer.device, post),
    )
    if summary["status"] == "ok" and run.record.write:
        detection_grid(model, data.val, data.classes, mean, std, trainer.device, post, run.dir / DETECTIONS_PLOT)
    log.info(
        "validation mAP@0.5 / mAP@[.5:.95]: NMS "
        + " / ".join(f"{summary.get(k, float('nan')):.4f}" for k in MAP_KEYS[:2])
        + ", soft-NMS "
        + " / ".join(f"{summary.get(k, float('nan')):.4f}" for k in MAP_KEYS[2:])
    )
    return summary


def check_detection_data(data: DataBundle) -> None:
    """Detection needs boxes: targets [N, M, 5] and class names (``data=shapes`` or ``data=coco``)."""
    y = getattr(data.train, "y", None)
    if y is None or y.dim() != 3 or y.shape[-1] != 5 or not data.classes:
        raise UserError(f"data {data.name} has no boxes: detect trains on detection data (data=shapes or data=coco)")
    if len(data.val.y) == 0:
        raise UserError("no validation images (data.val_size=0?): detect measures mAP on them every epoch")


def predict(cfg: DictConfig, opts: RunOptions, post: Postprocess) -> dict:
    """Detections of a trained run (``source``) on every image of ``images``, as a run of its own."""
    files = image_files(cfg.images)
    source = source_folder(cfg.source)
    meta = DetectorMeta.load(source / DETECTOR)
    # the run may come from elsewhere: its detector.json is data, rebuilt only from nas-cli's own targets
    node = saved_config.checked_node({"model": meta.model}, "model", f"source={cfg.source}: {source / DETECTOR}")
    model = instantiate({**node, "in_shape": meta.in_shape, "num_classes": len(meta.classes)})
    try:
        model.load_state_dict(checkpoint.load(source / WEIGHTS, map_location="cpu")["model"])
    except (KeyError, RuntimeError) as ex:
        raise UserError(f"source={cfg.source}: its {WEIGHTS} does not fit its {DETECTOR}") from ex
    model.to(opts.device)
    method = str(cfg.method)
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
