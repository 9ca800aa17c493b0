"""``nas-cli detect``: train a small one-stage detector, or predict with a trained one (``mode=predict
source=RUN images=FOLDER``). The config becomes objects here; the recipes are ``nas_cli.detection.recipe``."""

from __future__ import annotations

from hydra.utils import instantiate
from omegaconf import DictConfig

from nas_cli.config_values import as_dict
from nas_cli.detection.evaluate import Postprocess
from nas_cli.detection.recipe import DetectParts, predict, train
from nas_cli.engine.device import seed_everything
from nas_cli.errors import UserError
from nas_cli.runs.options import RunOptions


def task(cfg: DictConfig) -> dict:
    if cfg.mode not in ("train", "predict"):
        raise UserError(f"mode={cfg.mode}: use train or predict")
    opts = RunOptions.from_config(cfg)
    seed_everything(opts.seed)
    post = Postprocess(**as_dict(cfg.postprocess))
    if cfg.mode == "predict":
        return predict(cfg.source, cfg.images, str(cfg.method), opts, post)
    parts = DetectParts(
        data=lambda **kw: instantiate(cfg.data, **kw),
        model=lambda **kw: instantiate(cfg.model, **kw),
        model_config=as_dict(cfg.model),
        trainer=lambda **kw: instantiate(cfg.trainer, **kw),
        optimizer=instantiate(cfg.optim),
        loss=instantiate(cfg.loss),
        schedule=lambda: instantiate(cfg.sched),
    )
    return train(parts, opts, post)
