"""``nas-cli train``: build data, model, optimizer and schedule from the config, then fit.

``ensemble.size=K`` trains K members (seeds ``seed`` .. ``seed+K-1``) in
``members/<k>/`` and reports each one and their averaged-softmax ensemble.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import DictConfig

from nas_cli.data.bundle import shard_bundle
from nas_cli.engine import checkpoint, distributed, transfer
from nas_cli.engine.averaging import ensemble_accuracy
from nas_cli.engine.device import resolve_device, seed_everything
from nas_cli.engine.distributed import Dist
from nas_cli.engine.resume import checkpoint_to_resume
from nas_cli.engine.trainer import WEIGHTS, Trainer
from nas_cli.errors import UserError
from nas_cli.record import RunRecord, atomic_write, read_summary
from nas_cli.tools.latency import n_params

log = logging.getLogger(__name__)


def task(cfg: DictConfig) -> dict | float:
    """Hydra task for ``train`` (module-level, so launchers that pickle it work).

    Returns the summary, or the figure named by ``optimized_metric`` for sweepers that optimize one.
    """
    device = resolve_device(cfg.device)
    group = distributed.setup(device)
    if group.enabled and device.type == "cuda":
        device = torch.device("cuda", group.local_rank)
    # under torchrun every process writes into rank 0's run folder (the others have none of their own)
    run_dir = Path(distributed.broadcast(HydraConfig.get().runtime.output_dir))
    size = int(cfg.ensemble.size)
    if size < 1:
        raise UserError(f"ensemble.size={size}: use 1 (a single model) or more")
    try:
        summary = (train_one(cfg, run_dir, cfg.seed, device, group)[0] if size == 1
                   else train_ensemble(cfg, run_dir, size, device))
    finally:
        distributed.teardown()
    metric = cfg.get("optimized_metric")
    return float(summary[metric]) if metric else summary


def train_one(cfg: DictConfig, run_dir: Path, seed: int, device, group: Dist = Dist()) -> tuple[dict, object, object]:
    """Train one model in ``run_dir``; returns its summary, the model and the data."""
    seed_everything(seed)
    data = instantiate(cfg.data, seed=seed)
    if group.enabled:
        shard_bundle(data, group.rank, group.world, seed)
    model = instantiate(cfg.model, in_shape=data.in_shape, num_classes=data.num_classes)
    finished = read_summary(run_dir) if cfg.resume else None
    if finished and finished.get("status") == "ok" and (run_dir / WEIGHTS).is_file() \
            and finished.get("epochs") == int(cfg.trainer.epochs):
        model.load_state_dict(checkpoint.load(run_dir / WEIGHTS)["model"])  # a finished ensemble member
        return finished, model.to(device), data
    logger = instantiate(cfg.logger, run_dir=run_dir, hparams=_overrides()) if group.main else None
    trainer: Trainer = instantiate(cfg.trainer, device=device, run_dir=run_dir, progress=cfg.progress, dist=group,
                                   logger=logger)
    if cfg.init_from:
        transfer.load_pretrained(model, cfg.init_from)
    frozen = transfer.freeze(model, cfg.freeze)
    optimizer = instantiate(cfg.optim)(params=transfer.param_groups(model, cfg.backbone_lr_scale))
    transfer.apply_lr_scale(optimizer)
    log.info(f"{type(model).__name__} ({n_params(model):,} parameters"
             + (f", {len(frozen)} tensors frozen" if frozen else "") + f") on {data.name} "
             f"({data.in_shape}, {data.num_classes} classes), {device}; run folder {run_dir}")
    summary = trainer.fit(model, optimizer, data.train, data.val, schedule=instantiate(cfg.sched),
                          generator=data.generator, resume_from=checkpoint_to_resume(cfg.resume, run_dir),
                          seed=seed, regularizer=instantiate(cfg.regularizer), ema_decay=cfg.ema.decay)
    return summary, model, data


def _overrides() -> dict:
    """The run's command-line overrides as hyper-parameters (what a sweep varies)."""
    pairs = (o.split("=", 1) for o in HydraConfig.get().overrides.task if "=" in o)
    return {k.lstrip("+~"): v for k, v in pairs}


def train_ensemble(cfg: DictConfig, run_dir: Path, size: int, device) -> dict:
    """K independently seeded members, then the ensemble of their averaged softmax outputs."""
    members, summaries, frames = [], [], []
    gpus = torch.cuda.device_count() if device.type == "cuda" else 0
    for k in range(size):
        # members train one after another; with several GPUs each member gets the next one
        member_device = torch.device("cuda", k % gpus) if gpus > 1 else device
        summary, model, data = train_one(cfg, run_dir / "members" / str(k), cfg.seed + k, member_device)
        model.to(device)
        if summary["status"] != "ok":
            raise UserError(f"ensemble member {k} ended with status {summary['status']}; see {run_dir}/members/{k}")
        members.append(model)
        summaries.append(summary)
        frames.append(pd.read_csv(run_dir / "members" / str(k) / "metrics.csv"))
    accuracy = ensemble_accuracy(members, data.val, device)
    record = RunRecord(run_dir, pd.concat(frames).groupby("epoch", sort=True).mean().reset_index()
                       .to_dict("records"))
    record.write_metrics()  # the members' mean curve
    table = pd.DataFrame([{"member": k, "seed": s["seed"], **{m: s.get(m) for m in ("train_loss", "train_acc",
                          "val_loss", "val_acc", "final_val_acc")}} for k, s in enumerate(summaries)])
    atomic_write(run_dir / "members.csv", lambda tmp: table.to_csv(tmp, index=False))
    headline = {m: float(table[m].mean()) for m in ("train_loss", "train_acc", "val_loss", "val_acc")}
    summary = {
        "status": "ok", "ensemble_size": size, **headline,
        "final_val_acc": float(table["final_val_acc"].mean()),
        "member_val_acc_std": float(table["final_val_acc"].std(ddof=1)),
        "ensemble_val_acc": accuracy,
        **{k: sum(s[k] for s in summaries) for k in ("wall_time_s", "device_hours", "gpu_hours")},
        "epochs": summaries[0]["epochs"], "last_n": summaries[0]["last_n"], "device": str(device),
        "seed": cfg.seed, "versions": summaries[0]["versions"],
    }
    record.write_summary(summary)
    log.info(f"ensemble of {size}: val_acc {accuracy:.4f} (members {table['final_val_acc'].mean():.4f} "
             f"± {summary['member_val_acc_std']:.4f})")
    return summary
