"""``nas-cli search-darts``: differentiable architecture search (DARTS, PC-DARTS, latency-aware).

The command writes only its bilevel step (an alpha step on an architecture batch before each
weight step) and reuses the engine's parts: ``Trainer.train_epoch`` / ``Trainer.evaluate`` for the
weight step and evaluation, atomic checkpoints, ``RunRecord`` for ``metrics.csv`` / ``summary.json``.
The derived genotype (``genotype.json``) trains from scratch with ``nas-cli train model=darts
model.genotype=RUN/genotype.json``.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from nas_cli.data.bundle import TensorLoader
from nas_cli.engine import checkpoint
from nas_cli.engine.device import resolve_device, seed_everything
from nas_cli.engine.progress import TrainingProgress
from nas_cli.engine.resume import CHECKPOINT, checkpoint_to_resume
from nas_cli.engine.trainer import FitState, Trainer
from nas_cli.errors import UserError
from nas_cli.nas.darts import latency as lat
from nas_cli.nas.darts.architect import Architect
from nas_cli.nas.darts.chain import ChainGenotype, ChainNetwork
from nas_cli.nas.darts.genotype import Genotype, alpha_entropy, derive
from nas_cli.nas.darts.supernet import SearchNetwork, num_edges
from nas_cli.record import RunRecord, run_cost

log = logging.getLogger(__name__)
GENOTYPE = "genotype.json"


def task(cfg: DictConfig) -> dict:
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    return search(cfg, run_dir)


def split_train(loader, fraction: float, seed: int) -> tuple[TensorLoader, TensorLoader]:
    """The training set as two halves: weights (1 - fraction) and architecture (fraction)."""
    if not isinstance(loader, TensorLoader):
        raise UserError("search-darts needs in-memory data (data=digits, mnist5k or synthetic)")
    if not 0 < fraction < 1:
        raise UserError(f"search.arch_fraction={fraction} must lie strictly between 0 and 1")
    n = len(loader.x)
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    n_arch = max(1, int(round(n * fraction)))
    halves = []
    for k, idx in enumerate((order[n_arch:], order[:n_arch])):
        mean = None if loader.mean is None else loader.mean.flatten()
        std = None if loader.std is None else loader.std.flatten()
        halves.append(TensorLoader(loader.x[idx], loader.y[idx], loader.batch_size, shuffle=True,
                                   generator=torch.Generator().manual_seed(seed + 7919 * (k + 1)),
                                   mean=mean, std=std, augment=loader.augment))
    return halves[0], halves[1]


def _cycle(loader):
    while True:
        yield from loader


def heatmap(arch, primitives: list[str], run_dir: Path, kinds=((False, "normal"), (True, "reduce"))) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from nas_cli.record import atomic_write

    for reduction, name in kinds:
        p = F.softmax((arch.reduce if reduction else arch.normal).detach().float().cpu(), dim=-1).numpy()
        fig, ax = plt.subplots(figsize=(1 + 0.8 * len(primitives), 1 + 0.35 * p.shape[0]))
        im = ax.imshow(p, cmap="viridis", aspect="auto")
        ax.set_xticks(range(len(primitives)), primitives, rotation=45, ha="right")
        ax.set_ylabel("slot" if name == "chain" else "edge")
        ax.set_title(f"softmax(alpha), {name} cell")
        fig.colorbar(im, ax=ax)
        fig.tight_layout()
        atomic_write(run_dir / f"alpha_{name}.png", lambda tmp, fig=fig: fig.savefig(tmp, format="png", dpi=80))
        plt.close(fig)


def search(cfg: DictConfig, run_dir: Path) -> dict:
    space, opts, lcfg = cfg.space, cfg.search, cfg.latency
    kind = space.get("name", "darts")
    if kind not in ("darts", "chain"):
        raise UserError(f"space.name={kind}: use darts or chain")
    if cfg.get("threads"):
        torch.set_num_threads(int(cfg.threads))
    device = resolve_device(cfg.device)
    generator = seed_everything(int(cfg.seed))
    data = instantiate(cfg.data, seed=int(cfg.seed))
    w_loader, a_loader = split_train(data.train, float(opts.arch_fraction), int(cfg.seed))
    primitives = list(space.primitives)
    nodes = int(space.nodes)
    if kind == "chain":
        model = ChainNetwork(data.in_shape, data.num_classes, int(space.slots), list(space.candidates)).to(device)
        primitives = list(space.candidates)
    else:
        model = SearchNetwork(data.in_shape, data.num_classes, int(space.init_channels), int(space.layers), nodes,
                              primitives, int(space.stem_multiplier), int(opts.partial_channels or 1),
                              bool(opts.edge_norm)).to(device)
    term = None
    if kind == "chain" and (float(lcfg.weight) != 0 or lcfg.table):
        raise UserError("the latency term is for space.name=darts only; leave latency.weight=0 with space=chain")
    if float(lcfg.weight) != 0 or lcfg.table:
        shapes = lat.edge_shapes(model, data.in_shape)
        table = lat.load_table(lcfg.table) if lcfg.table else lat.measure(
            shapes, primitives, device, int(lcfg.batch), int(lcfg.repeats))
        lat.save_table(run_dir / "latency.json", table, device)
        term = lat.LatencyTerm(model.arch, lat.edge_latency(shapes, primitives, table, num_edges(nodes)),
                               float(lcfg.weight), str(lcfg.form), float(lcfg.beta))
    architect = Architect(model, str(opts.order), float(opts.arch_lr), tuple(opts.arch_betas),
                          float(opts.arch_weight_decay), objective=term,
                          reuse_train_grad=bool(opts.reuse_train_grad))
    optimizer = torch.optim.SGD(model.parameters(), lr=float(opts.lr), momentum=float(opts.momentum),
                                weight_decay=float(opts.weight_decay))
    epochs = int(opts.epochs)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(1, epochs * len(w_loader)),
                                                           eta_min=float(opts.lr_min))
    trainer = Trainer(epochs=epochs, grad_clip=opts.grad_clip, checkpoint=True, device=device, run_dir=run_dir,
                      progress=bool(cfg.progress))
    record = RunRecord(run_dir)
    fit = FitState(model=model, optimizer=optimizer, schedule=None, scheduler=scheduler,
               scaler=torch.amp.GradScaler(device.type, enabled=False), generator=generator, regularizer=None,
               ema=None, record=record)
    start, wall_before = 0, 0.0
    resume_from = checkpoint_to_resume(cfg.resume, run_dir)
    if resume_from:
        state = checkpoint.load(resume_from, map_location=device)
        model.load_state_dict(state["model"])
        model.arch.load_state_dict(state["arch"])
        optimizer.load_state_dict(state["optimizer"])
        architect.optimizer.load_state_dict(state["arch_optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        scheduler.T_max = max(1, epochs * len(w_loader))  # search.epochs may have been raised to extend a run
        torch.set_rng_state(state["rng"]["torch"].cpu())
        w_loader.generator.set_state(state["rng"]["w"].cpu())
        a_loader.generator.set_state(state["rng"]["a"].cpu())
        record.rows = list(state["history"])
        start, wall_before = int(state["epoch"]), float(state["wall_time_s"])
        log.info(f"resuming {run_dir} after epoch {start}")
    arch_batches = {}  # restarted every epoch, so a resumed search draws the same batches

    def bilevel(net, x, y):
        if net.training:  # the alpha step on an architecture batch, then the weight step's loss
            xa, ya = next(arch_batches["it"])
            architect.step(x, y, xa.to(device), ya.to(device), xi=optimizer.param_groups[0]["lr"])
            if architect.unrolled_train is not None:
                return architect.weight_loss_from_unrolled()
        model.detach_arch = net.training
        try:
            logits = net(x)
        finally:
            model.detach_arch = False
        return F.cross_entropy(logits, y), logits

    log.info(f"DARTS search: {sum(p.numel() for p in model.parameters()):,} weights, {nodes} nodes, "
             f"{len(primitives)} ops, {space.layers} cells, order {opts.order}, on {data.name} {data.in_shape}, "
             f"{device}; run folder {run_dir}")
    t0 = time.perf_counter()
    genotype: Genotype | None = None
    status = "ok"
    try:
        with TrainingProgress(enabled=bool(cfg.progress)) as bar:
            job = bar.add_task("search", total=(epochs - start) * len(w_loader), info="")
            for epoch in range(start + 1, epochs + 1):
                e0 = time.perf_counter()
                arch_batches["it"] = _cycle(a_loader)
                stats = trainer.train_epoch(model, fit, w_loader, loss_fn=bilevel, on_batch=lambda: bar.tick(job))
                val = trainer.evaluate(model, data.val)
                genotype = derive_genotype(model, primitives, nodes, opts.max_skip)
                row = {"epoch": epoch, **stats, **val,
                       "alpha_entropy_normal": alpha_entropy(model.arch.normal),
                       **({} if kind == "chain" else {"alpha_entropy_reduce": alpha_entropy(model.arch.reduce)}),
                       "skip_count": genotype.skip_count("normal"), "genotype": str(genotype),
                       "epoch_time_s": time.perf_counter() - e0}
                if term is not None:
                    with torch.no_grad():
                        row["expected_latency_ms"] = float(term.expected())
                    row["derived_latency_ms"] = term.derived(genotype, nodes, primitives)
                genotype.save(run_dir / GENOTYPE)
                genotype.save(run_dir / "genotypes" / f"epoch_{epoch:03d}.json")
                if opts.heatmap:
                    heatmap(model.arch, primitives, run_dir,
                            ((False, "chain"),) if kind == "chain" else ((False, "normal"), (True, "reduce")))
                record.log(row)
                checkpoint.save(run_dir / CHECKPOINT, {
                    "epoch": epoch, "model": model.state_dict(), "arch": model.arch.state_dict(),
                    "optimizer": optimizer.state_dict(), "arch_optimizer": architect.optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(), "history": record.rows,
                    "rng": {"torch": torch.get_rng_state(), "w": w_loader.generator.get_state(),
                            "a": a_loader.generator.get_state()},
                    "wall_time_s": wall_before + time.perf_counter() - t0})
                log.info(f"epoch {epoch}/{epochs}  train_loss {row['train_loss']:.4f}  train_acc "
                         f"{row['train_acc']:.4f}  val_loss {row['val_loss']:.4f}  val_acc {row['val_acc']:.4f}  "
                         f"skips {row['skip_count']}  {genotype}")
    except KeyboardInterrupt:
        status = "interrupted"
        raise
    finally:
        wall = wall_before + time.perf_counter() - t0
        if genotype is None and record.rows:
            genotype = derive_genotype(model, primitives, nodes, opts.max_skip)
        summary = _summary(status, record.rows, genotype, wall, device, cfg, term, nodes, primitives)
        record.write_summary(summary)
    return summary


def derive_genotype(model, primitives, nodes, max_skip) -> Genotype | ChainGenotype:
    if isinstance(model, ChainNetwork):
        return model.derive()
    arch = model.arch
    return derive(arch.normal, arch.reduce, primitives, nodes, None if max_skip is None else int(max_skip),
                  *(arch.edge_weights(False).detach().cpu(), arch.edge_weights(True).detach().cpu())
                  if arch.edge_norm else (None, None))


def _summary(status, rows, genotype, wall, device, cfg, term, nodes, primitives) -> dict:
    last = rows[-1] if rows else {}
    summary = {"status": status, "epochs": len(rows),
               "genotype": genotype.to_dict() if genotype else None,
               "genotype_str": str(genotype) if genotype else None,
               **{k: last[k] for k in ("train_loss", "train_acc", "val_loss", "val_acc") if k in last},
               "final_val_acc": last.get("val_acc"),
               "best_val_acc": max((r["val_acc"] for r in rows), default=None),
               "skip_count": last.get("skip_count"),
               "search": OmegaConf.to_container(cfg.search), **run_cost(wall, device, int(cfg.seed))}
    if term is not None and genotype is not None:
        summary["expected_latency_ms"] = last.get("expected_latency_ms")
        summary["derived_latency_ms"] = term.derived(genotype, nodes, primitives)
    return summary
