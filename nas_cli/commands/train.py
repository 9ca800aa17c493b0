"""``nas-cli train``: the config becomes the builders of data, model, trainer, optimizer and schedule; the
recipe (one model or an ensemble) is ``nas_cli.engine.recipe.train``."""

from __future__ import annotations

from hydra.utils import get_object, instantiate
from omegaconf import DictConfig

from nas_cli.config_values import as_list
from nas_cli.engine.recipe import TrainParts, train
from nas_cli.runs.options import RunOptions


def task(cfg: DictConfig) -> dict | float:
    """Hydra task for ``train`` (module-level, so launchers that pickle it work).

    Returns the summary, or the figure named by ``optimized_metric`` for sweepers that optimize one.
    """
    check_model_files(cfg.model)  # a genotype or an architecture from elsewhere: refused before anything starts
    opts = RunOptions.from_config(cfg)
    freeze = cfg.freeze
    parts = TrainParts(
        data=lambda **kw: instantiate(cfg.data, **kw),
        model=lambda **kw: instantiate(cfg.model, **kw),
        trainer=lambda **kw: instantiate(cfg.trainer, **kw),
        optimizer=instantiate(cfg.optim),
        schedule=lambda: instantiate(cfg.sched),
        regularizer=lambda: instantiate(cfg.regularizer),
        ema_decay=cfg.ema.decay,
        label_smoothing=float(cfg.loss.label_smoothing),
        init_from=cfg.init_from,
        init_from_weights=str(cfg.init_from_weights),
        freeze=freeze if freeze is None or isinstance(freeze, str) else as_list(freeze),
        backbone_lr_scale=float(cfg.backbone_lr_scale),
        epochs=int(cfg.trainer.epochs),
    )
    summary = train(parts, opts, ensemble_size=int(cfg.ensemble.size))
    metric = cfg.optimized_metric
    return float(summary[metric]) if metric else summary


def check_model_files(model: DictConfig) -> None:
    """The files a model is built from (``model.genotype``, ``model.arch``), read and checked by the model
    class's own ``check_config``: a broken one is one line before the run folder, its data or its model."""
    try:
        target = get_object(str(model._target_))
    except Exception:  # noqa: BLE001 - a target that cannot be found is instantiate's to report
        return
    check = getattr(target, "check_config", None)
    if check is not None:
        check(model)
