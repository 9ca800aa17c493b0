"""``nas-cli prep-imagenet``: the ILSVRC2012 archives as ``dst/train/<wnid>/`` and ``dst/val/<wnid>/``.

The config becomes the extraction's ``Options`` here; the recipe is ``nas_cli.tools.imagenet.recipe``.
"""

from __future__ import annotations

from omegaconf import DictConfig

from nas_cli.config_values import as_list
from nas_cli.runs.options import RunOptions
from nas_cli.tools.imagenet.prepare import Options
from nas_cli.tools.imagenet.recipe import prep_imagenet


def options(cfg: DictConfig, seed: int, progress: bool) -> Options:
    splits = [cfg.splits] if isinstance(cfg.splits, str) else as_list(cfg.splits)
    return Options(
        src=str(cfg.src),
        dst=str(cfg.dst),
        splits=tuple(splits),
        workers=int(cfg.workers),
        labels=str(cfg.labels),
        fix_images=bool(cfg.fix_images),
        classes=cfg.classes,
        per_class=cfg.per_class,
        seed=seed,
        verify=bool(cfg.verify),
        dry_run=bool(cfg.dry_run),
        progress=progress,
    )


def task(cfg: DictConfig) -> dict:
    run_opts = RunOptions.from_config(cfg)
    return prep_imagenet(options(cfg, run_opts.seed, run_opts.progress), run_opts)
