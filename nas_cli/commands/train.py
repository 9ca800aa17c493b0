"""``nas-cli train``: build data, model, optimizer and schedule from the config, then fit."""

from __future__ import annotations

import logging
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import DictConfig

from nas_cli.engine.device import resolve_device, seed_everything
from nas_cli.engine.trainer import CHECKPOINT

log = logging.getLogger(__name__)


def task(cfg: DictConfig) -> dict:
    """Hydra task for ``train`` (module-level, so launchers that pickle it work)."""
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    device = resolve_device(cfg.device)
    trainer = instantiate(cfg.trainer, device=device, run_dir=run_dir, progress=cfg.progress)
    seed_everything(cfg.seed)
    data = instantiate(cfg.data, seed=cfg.seed)
    model = instantiate(cfg.model, in_shape=data.in_shape, num_classes=data.num_classes)
    optimizer = instantiate(cfg.optim)(params=model.parameters())
    schedule = instantiate(cfg.sched)
    log.info(f"{type(model).__name__} ({sum(p.numel() for p in model.parameters()):,} parameters) on "
             f"{data.name} ({data.in_shape}, {data.num_classes} classes), {device}; run folder {run_dir}")
    return trainer.fit(model, optimizer, data.train, data.val, schedule=schedule, generator=data.generator,
                       resume_from=_checkpoint_to_resume(cfg.resume, run_dir), seed=cfg.seed)


def _checkpoint_to_resume(resume, run_dir: Path) -> Path | None:
    """The run folder's own checkpoint when resuming (the bridge already moved us into that folder)."""
    if resume in (False, None, "false"):
        return None
    path = run_dir / CHECKPOINT
    if path.is_file():
        return path
    log.info(f"resume: no checkpoint in {run_dir}, starting from scratch")
    return None
