"""``nas-cli train``'s recipe: one model fitted by the engine, or an ensemble of independently seeded members.

``ensemble.size=K`` trains K members (seeds ``seed`` .. ``seed+K-1``) in ``members/<k>/``, each a run of its
own, and reports each one and their averaged-softmax ensemble.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from torch import nn

from nas_cli.data.bundle import DataBundle, shard_bundle
from nas_cli.engine import distributed, transfer
from nas_cli.engine.averaging import ensemble_accuracy
from nas_cli.engine.device import seed_everything
from nas_cli.engine.distributed import Dist
from nas_cli.engine.latency import n_params
from nas_cli.engine.losses import cross_entropy, smoothed_cross_entropy
from nas_cli.engine.trainer import HEADLINE, Trainer
from nas_cli.errors import UserError
from nas_cli.runs.files import MEMBERS, MEMBERS_TABLE, METRICS
from nas_cli.runs.lifecycle import Run
from nas_cli.runs.options import RunOptions
from nas_cli.runs.record import atomic_write

log = logging.getLogger(__name__)
COMMAND = "train"


@dataclass
class TrainParts:
    """What a model of ``train`` is built from; each builder is called once a member, with its seed's state.

    ``data(seed=)``, ``model(in_shape=, num_classes=)``, ``trainer(device=, progress=, dist=)``,
    ``optimizer(params=)`` (a partial of the ``optim`` group) and ``schedule()`` / ``regularizer()``.
    """

    data: Callable[..., DataBundle]
    model: Callable[..., nn.Module]
    trainer: Callable[..., Trainer]
    optimizer: Callable[..., torch.optim.Optimizer]
    schedule: Callable[[], Any]
    regularizer: Callable[[], Any]
    ema_decay: float | str | None = None
    label_smoothing: float = 0.0
    init_from: str | None = None
    init_from_weights: str = "last"
    freeze: list[str] | str | None = None
    backbone_lr_scale: float = 1.0
    epochs: int = 1  # trainer.epochs: the budget an ensemble's run records before its members build trainers


def train(parts: TrainParts, opts: RunOptions, ensemble_size: int = 1) -> dict:
    """One model (``ensemble_size=1``) or an ensemble, as a run in ``opts.run_dir``; returns the summary."""
    if ensemble_size < 1:
        raise UserError(f"ensemble.size={ensemble_size}: use 1 (a single model) or more")
    device = opts.device
    group = distributed.setup(device)
    if group.enabled and device.type == "cuda":
        device = torch.device("cuda", group.local_rank)
    # under torchrun every process writes into rank 0's run folder (the others have none of their own)
    run_dir = Path(distributed.broadcast(str(opts.run_dir)))
    try:
        if ensemble_size == 1:
            return train_one(parts, opts, run_dir, opts.seed, device, group)[0]
        return train_ensemble(parts, opts, run_dir, ensemble_size, device)
    finally:
        distributed.teardown()


def train_one(
    parts: TrainParts, opts: RunOptions, run_dir: Path, seed: int, device: torch.device, group: Dist = Dist()
) -> tuple[dict, nn.Module, DataBundle]:
    """Train one model as a run in ``run_dir``; returns its summary, the model and the data."""
    seed_everything(seed)
    data = parts.data(seed=seed)
    if group.enabled:
        shard_bundle(data, group.rank, group.world, seed)
    model = parts.model(in_shape=data.in_shape, num_classes=data.num_classes)
    trainer = parts.trainer(device=device, progress=opts.progress, dist=group)
    if parts.init_from:
        transfer.load_pretrained(model, parts.init_from, parts.init_from_weights)
    frozen = transfer.freeze(model, parts.freeze)
    model.to(device)  # before the optimizer: some (Adagrad) make their state as they are built
    optimizer = parts.optimizer(params=transfer.param_groups(model, parts.backbone_lr_scale))
    transfer.apply_lr_scale(optimizer)
    log.info(
        f"{type(model).__name__} ({n_params(model):,} parameters"
        + (f", {len(frozen)} tensors frozen" if frozen else "")
        + f") on {data.name} "
        f"({data.in_shape}, {data.num_classes} classes), {device}; run folder {run_dir}"
    )
    model_figures = getattr(model, "summary_figures", dict)  # a model's own summary figures (MLP: hidden units)
    run = opts.run(
        COMMAND,
        run_dir=run_dir,
        seed=seed,
        device=device,
        budget={"trainer.epochs": trainer.epochs},
        headline=[*headline(data), *model_figures()],
        write=group.main,
    )
    summary = trainer.fit(
        model,
        optimizer,
        data.train,
        data.val,
        run=run,
        schedule=parts.schedule(),
        generator=data.generator,
        regularizer=parts.regularizer(),
        ema_decay=parts.ema_decay,
        test_loader=data.test,
        # smoothing shapes training only: val/test losses stay plain cross-entropy, comparable
        loss_fn=smoothed_cross_entropy(float(parts.label_smoothing)),
        eval_loss_fn=cross_entropy,
        figures=lambda: {"val_split": data.val_split, **model_figures()},
    )
    return summary, model, data


def headline(data: DataBundle) -> list[str]:
    """The summary figures a report shows first: the test accuracy too when the data has a test set."""
    return [*HEADLINE, "test_acc"] if data.test is not None else HEADLINE


def train_ensemble(parts: TrainParts, opts: RunOptions, run_dir: Path, size: int, device: torch.device) -> dict:
    """K independently seeded members (each a run in ``members/<k>``), then their averaged-softmax ensemble."""
    run = opts.run(
        COMMAND,
        run_dir=run_dir,
        device=device,
        budget={"trainer.epochs": parts.epochs, "ensemble.size": size},
        headline=[*HEADLINE, "ensemble_val_acc"],
    )
    done = run.finished()
    if done is not None:
        return done
    members, summaries = [], []
    gpus = torch.cuda.device_count() if device.type == "cuda" else 0
    figures: dict = {}
    run.figures = lambda: figures
    with run:
        for k in range(size):
            # members train one after another; with several GPUs each member gets the next one
            member_device = torch.device("cuda", k % gpus) if gpus > 1 else device
            summary, model, data = train_one(parts, opts, run_dir / MEMBERS / str(k), opts.seed + k, member_device)
            if summary["status"] != "ok":
                raise UserError(
                    f"ensemble member {k} ended with status {summary['status']}; see {run_dir / MEMBERS / str(k)}"
                )
            members.append(model.to(device))
            summaries.append(summary)
        figures.update(_ensemble_figures(run, summaries, ensemble_accuracy(members, data.val, device)))
        figures["val_split"] = data.val_split
        if data.test is not None:  # members' own test figures are in their summaries
            figures["ensemble_test_acc"] = ensemble_accuracy(members, data.test, device)
            figures["test_acc"] = sum(s["test_acc"] for s in summaries) / size
            run.headline += ["test_acc", "ensemble_test_acc"]
    log.info(
        f"ensemble of {size}: val_acc {figures['ensemble_val_acc']:.4f} (members "
        f"{figures['final_val_acc']:.4f} ± {figures['member_val_acc_std']:.4f})"
    )
    return run.summary


def _ensemble_figures(run: Run, summaries: list[dict], accuracy: float) -> dict:
    """members.csv, the members' mean curve as metrics.csv, and the ensemble's summary figures."""
    frames = [pd.read_csv(run.dir / MEMBERS / str(k) / METRICS) for k in range(len(summaries))]
    run.record.rows = pd.concat(frames).groupby("epoch", sort=True).mean().reset_index().to_dict("records")
    run.record.write_metrics()
    table = pd.DataFrame(
        [
            {
                "member": k,
                "seed": s["seed"],
                **{m: s.get(m) for m in ("train_loss", "train_acc", "val_loss", "val_acc", "final_val_acc")},
            }
            for k, s in enumerate(summaries)
        ]
    )
    atomic_write(run.dir / MEMBERS_TABLE, lambda tmp: table.to_csv(tmp, index=False))
    return {
        "ensemble_size": len(summaries),
        **{m: float(table[m].mean()) for m in ("train_loss", "train_acc", "val_loss", "val_acc")},
        "final_val_acc": float(table["final_val_acc"].mean()),
        "member_val_acc_std": float(table["final_val_acc"].std(ddof=1)),
        "ensemble_val_acc": accuracy,
        **{k: summaries[0].get(k) for k in ("epochs", "last_n", "averaged_epochs")},
    }
