"""The DARTS search as a recipe on the training engine.

``search`` splits the training data into a weight part and an architecture part, builds the
bilevel step (an alpha step on an architecture batch before each weight step, first or second
order, optionally with a latency term; none during ``arch.warmup_epochs``) and hands it to
``Trainer.fit``, which does the rest as for any training run: the weight optimizer and schedule
(the ``optim`` / ``sched`` groups; search-darts' ``sched.every=epoch`` steps it once an epoch, as DARTS does), clipping,
evaluation, checkpoints with the architecture state inside, exact resume, the run record. Each
epoch adds the derived genotype and alpha's entropy to ``metrics.csv`` and writes it to
``genotypes/epoch_NNN.json`` (and α heatmaps). ``genotype.json``, the search's result, is written
once the search has ended ``ok``: a diverged, failed or interrupted search has none (its alpha is
no result), as a diverged training run has no ``model.pt``. An epoch whose loss is not finite
derives nothing: the engine stops the search there.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from nas_cli.data.bundle import DataBundle, TensorLoader
from nas_cli.data.resident import place_loaders
from nas_cli.data.resumable import BatchStream
from nas_cli.engine.schedules import Schedule
from nas_cli.engine.trainer import HEADLINE, Trainer
from nas_cli.errors import UserError
from nas_cli.nas.darts import diagnostics as diag
from nas_cli.nas.darts import latency as lat
from nas_cli.nas.darts.architect import Architect
from nas_cli.nas.darts.chain import ChainNetwork
from nas_cli.nas.darts.genotype import Genotype, alpha_entropy
from nas_cli.nas.darts.plots import alpha_heatmaps
from nas_cli.nas.darts.supernet import SearchNetwork, num_edges
from nas_cli.runs.files import GENOTYPE, GENOTYPES, LATENCY
from nas_cli.runs.lifecycle import Run

log = logging.getLogger(__name__)
SEARCH_HEADLINE = [*HEADLINE, "alpha_entropy_drop", "argmax_changes_last3", "skip_count"]


@dataclass
class ArchOptions:
    """The architecture parameters alpha and their optimizer (DARTS: Adam, lr 3e-4, betas (0.5, 0.999),
    weight decay 1e-3), the bilevel step, and what is derived from alpha.

    ``unrolled``: w' of the second-order step, ``code`` (quark0/darts, default: it produced the paper's
    Table 1) or ``paper`` (see ``nas_cli.nas.darts.architect``). ``warmup_epochs``: epochs of weight
    steps alone before alpha starts to move (PC-DARTS: 15; DARTS: 0). ``lr_schedule``: alpha's lr held
    (``constant``, DARTS) or annealed (``cosine``, see ``lr_at``). ``hessian_every``: measure the
    dominant eigenvalue of the architecture loss' Hessian every N epochs (0: never); ``hessian_stop``:
    RobustDARTS' early stop on it, over windows of ``hessian_window`` measurements
    (``nas_cli.nas.darts.diagnostics``).
    """

    order: str
    unrolled: str
    warmup_epochs: int
    reuse_train_grad: bool
    fraction: float
    lr: float
    betas: tuple[float, float]
    weight_decay: float
    max_skip: int | None
    heatmap: bool
    lr_schedule: str = "constant"
    hessian_every: int = 0
    hessian_stop: bool = False
    hessian_window: int = 5

    def lr_at(self, epoch: int, epochs: int) -> float:
        """alpha's lr in ``epoch`` (0-based): ``constant`` (DARTS), or ``cosine`` from ``lr`` at the first epoch
        that moves alpha towards 0 at the last, so the argmax that the cell is read from settles."""
        if self.lr_schedule == "constant":
            return self.lr
        span = max(epochs - self.warmup_epochs, 1)
        return self.lr * 0.5 * (1 + math.cos(math.pi * (epoch - self.warmup_epochs) / span))


@dataclass
class StepOptions:
    """How the bilevel step runs, not what it computes (the ``search`` block of search_darts.yaml).

    ``compile``: ``torch.compile`` the supernet in place, so every pass of the step (the alpha step's, the
    unrolled and finite-difference passes, the weight step's, evaluation) runs compiled; inductor also
    merges the repeated work of the edges leaving one state (the ReLU and pools of one input). ``mode``
    ``auto`` is ``reduce-overhead`` on CUDA (CUDA graphs: a small supernet's step is launch-bound there)
    and inductor's default elsewhere. ``backend``: ``inductor`` or ``aot_eager`` (tracing alone, for checks).
    ``drop_last``: each search loader drops its last partial batch so every step has one shape (one
    graph); ``auto`` does so only when compiling, since quark0/darts keeps the partial batch (eager default).
    """

    compile: bool = False
    mode: str = "auto"
    backend: str = "inductor"
    drop_last: bool | str = "auto"

    def drops_last(self) -> bool:
        if self.drop_last == "auto":
            return bool(self.compile)
        if not isinstance(self.drop_last, bool):
            raise UserError(f"search.drop_last={self.drop_last}: use auto, true or false")
        return self.drop_last

    def compile_mode(self, device: torch.device) -> str | None:
        """torch.compile's mode for ``device`` (None: its default)."""
        if self.mode == "auto":
            return "reduce-overhead" if device.type == "cuda" else None
        if self.mode not in COMPILE_MODES:
            raise UserError(f"search.mode={self.mode}: use auto or one of {', '.join(COMPILE_MODES)}")
        return None if self.mode == "default" else self.mode


COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


def compile_supernet(supernet, opts: StepOptions, device: torch.device) -> bool:
    """Compile ``supernet`` in place (its ``__call__``: the engine and the architect both go through it);
    True when the compiled module runs under CUDA graphs, whose step boundaries the caller marks."""
    if opts.backend not in ("inductor", "aot_eager"):
        raise UserError(f"search.backend={opts.backend}: use inductor or aot_eager")
    mode = opts.compile_mode(device)
    # dynamic=False: one shape per step (drop_last), and a fixed-shape graph is what CUDA graphs record
    supernet.compile(backend=opts.backend, mode=mode, dynamic=False)
    return device.type == "cuda" and opts.backend == "inductor" and mode in ("reduce-overhead", "max-autotune")


@dataclass
class LatencyOptions:
    """The latency term: off at weight 0 unless a table is given (see ``nas_cli.nas.darts.latency``)."""

    weight: float
    form: str
    beta: float
    table: str | None
    batch: int
    repeats: int


def split_train(loader, fraction: float, seed: int, drop_last: bool = False) -> tuple[TensorLoader, TensorLoader]:
    """The training set as two parts: weights (1 - fraction) and architecture (fraction).

    ``drop_last``: each part drops its last partial batch (static shapes for a compiled step); the
    epoch's ``samples`` then count the images trained on, since the engine counts each batch's labels.
    """
    if not isinstance(loader, TensorLoader):
        raise UserError("search-darts needs in-memory data (data=digits, mnist5k, synthetic or cifar10)")
    if not 0 < fraction < 1:
        raise UserError(f"arch.fraction={fraction} must lie strictly between 0 and 1")
    n = len(loader.x)
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    n_arch = max(1, int(round(n * fraction)))
    if drop_last and min(n - n_arch, n_arch) < loader.batch_size:
        raise UserError(
            f"search.drop_last: a search loader holds {min(n - n_arch, n_arch)} images, fewer than "
            f"one batch of data.batch_size={loader.batch_size}: lower the batch size or drop_last=false"
        )
    mean = None if loader.mean is None else loader.mean.flatten()
    std = None if loader.std is None else loader.std.flatten()
    weights, arch = (
        TensorLoader(
            loader.x[idx],
            loader.y[idx],
            loader.batch_size,
            shuffle=True,
            generator=torch.Generator().manual_seed(seed + 7919 * (k + 1)),
            mean=mean,
            std=std,
            augment=loader.augment,
            drop_last=drop_last,
            on_device=loader.on_device,
        )
        for k, idx in enumerate((order[n_arch:], order[:n_arch]))
    )
    return weights, arch


class BilevelStep:
    """The engine's loss function for search-darts: in training, first an alpha step on the next
    architecture batch (from epoch ``warmup_epochs`` on), then the weight step's loss with alpha held
    constant. The epoch in progress is the supernet's (the engine sets it through ``set_epoch``)."""

    def __init__(
        self,
        supernet,
        architect: Architect,
        arch_batches: BatchStream,
        optimizer,
        device,
        warmup_epochs: int = 0,
        cuda_graphs: bool = False,
        arch_lr: Callable[[int], float] | None = None,
    ):
        self.supernet, self.architect, self.arch_batches = supernet, architect, arch_batches
        self.optimizer, self.device, self.warmup_epochs = optimizer, device, warmup_epochs
        self.cuda_graphs = cuda_graphs  # a supernet compiled under CUDA graphs: mark where each step begins
        self.arch_lr, self._lr_epoch = arch_lr, -1  # alpha's lr of an epoch (None: as the optimizer has it)

    def __call__(self, net, x, y):
        if self.cuda_graphs and net.training:
            torch.compiler.cudagraph_mark_step_begin()
        if net.training and self.supernet.epoch >= self.warmup_epochs:
            if self.arch_lr is not None and self._lr_epoch != self.supernet.epoch:  # once an epoch, resumed too
                self._lr_epoch = self.supernet.epoch
                for group in self.architect.optimizer.param_groups:
                    group["lr"] = self.arch_lr(self._lr_epoch)
            xa, ya = next(self.arch_batches)
            # xi, the unrolled step's size, is the weight lr of this very step
            self.architect.step(x, y, xa.to(self.device), ya.to(self.device), xi=self.optimizer.param_groups[0]["lr"])
            if self.architect.unrolled_train is not None:
                return self.architect.weight_loss_from_unrolled()
        self.supernet.detach_arch = net.training
        try:
            logits = net(x)
        finally:
            self.supernet.detach_arch = False
        return F.cross_entropy(logits, y), logits


def latency_term(supernet, data: DataBundle, opts: LatencyOptions, run: Run) -> lat.LatencyTerm | None:
    """The latency term, its table measured here (or reused: ``latency.table``, a resumed run's own)."""
    if opts.weight == 0 and not opts.table:
        return None
    if isinstance(supernet, ChainNetwork):
        raise UserError("the latency term is for supernet=darts only; leave latency.weight=0 with supernet=chain")
    shapes = lat.edge_shapes(supernet, data.in_shape)
    table_file = opts.table or (run.dir / LATENCY if run.resume and (run.dir / LATENCY).is_file() else None)
    table = (
        lat.load_table(table_file)
        if table_file
        else lat.measure(shapes, supernet.primitives, run.device, opts.batch, opts.repeats)
    )
    lat.save_table(run.dir / LATENCY, table, run.device)
    return lat.LatencyTerm(
        supernet.arch,
        lat.edge_latency(shapes, supernet.primitives, table, num_edges(supernet.nodes)),
        opts.weight,
        opts.form,
        opts.beta,
    )


def search(
    supernet: SearchNetwork | ChainNetwork,
    data: DataBundle,
    trainer: Trainer,
    optimizer: torch.optim.Optimizer,
    schedule: Schedule | None,
    run: Run,
    arch: ArchOptions,
    latency: LatencyOptions,
    step_opts: StepOptions,
) -> dict:
    """Search in ``run``: train the supernet's weights and alpha together; returns the run's summary."""
    chain = isinstance(supernet, ChainNetwork)
    if isinstance(optimizer, torch.optim.LBFGS):
        raise UserError("optim=lbfgs re-evaluates each step's loss: the bilevel step takes sgd, adam, ...")
    if chain and arch.max_skip is not None:
        raise UserError("arch.max_skip caps skip_connect in DARTS cells: leave it null with supernet=chain")
    if int(arch.warmup_epochs) != arch.warmup_epochs or arch.warmup_epochs < 0:
        raise UserError(f"arch.warmup_epochs={arch.warmup_epochs} must be a whole number of epochs, 0 or more")
    if arch.warmup_epochs >= trainer.epochs:
        log.warning(f"arch.warmup_epochs={arch.warmup_epochs} >= trainer.epochs={trainer.epochs}: alpha never moves")
    if arch.hessian_stop:
        if not arch.hessian_every:
            raise UserError("arch.hessian_stop=true stops on the Hessian's eigenvalue: give arch.hessian_every=N too")
        if trainer.early_stop.active:
            raise UserError("arch.hessian_stop and trainer.early_stop both stop the search: keep one")
        trainer.early_stop = diag.HessianStop(arch.hessian_window)
    if step_opts.compile and step_opts.backend == "inductor" and run.device.type == "cpu":
        raise UserError(
            "search.compile=true on the CPU: inductor's C++ code generation for the supernet's backward graph takes "
            "tens of minutes there (a 2-cell supernet did not finish its first epoch in 16); search eagerly "
            "(search.compile=false), check the capture with search.backend=aot_eager, or compile on a GPU"
        )
    if arch.hessian_every and step_opts.compile:
        raise UserError("arch.hessian_every needs double backward, which torch.compile lacks: use search.compile=false")
    supernet.to(run.device)
    w_loader, a_loader = split_train(data.train, arch.fraction, run.seed or 0, step_opts.drops_last())
    # data.on_device: both parts and the validation data decided together (the engine places the rest)
    place_loaders([w_loader, a_loader, data.val], run.device)
    term = latency_term(supernet, data, latency, run)  # measured before compiling (its shape hooks run eagerly)
    graphs = compile_supernet(supernet, step_opts, run.device) if step_opts.compile else False
    architect = Architect(
        supernet,
        arch.order,
        arch.lr,
        tuple(arch.betas),
        arch.weight_decay,
        objective=term,
        reuse_train_grad=arch.reuse_train_grad,
        unrolled=arch.unrolled,
        weight_optimizer=optimizer,
    )
    arch_batches = BatchStream(a_loader, a_loader.generator)
    kinds = ((False, "chain"),) if chain else ((False, "normal"), (True, "reduce"))
    derived: dict = {}  # the genotype of the last epoch (the summary's, however the run ends)

    alphas: list[torch.Tensor] = (
        [supernet.arch.normal] if isinstance(supernet, ChainNetwork) else [supernet.arch.normal, supernet.arch.reduce]
    )
    num_ops = int(alphas[0].shape[-1])
    hessian_batch = a_loader.fixed_batch(a_loader.batch_size)

    def derive():
        return supernet.derive() if isinstance(supernet, ChainNetwork) else supernet.derive(arch.max_skip)

    started = time.perf_counter()

    def on_epoch_end(row: dict) -> dict:
        if step_opts.compile and row["epoch"] == 1:  # compilation happens in the first steps, forward and backward
            log.info(f"search.compile: the first epoch, compiling included, took {time.perf_counter() - started:.1f} s")
        if not (math.isfinite(row["train_loss"]) and math.isfinite(row["val_loss"])):
            return {}  # diverged: the engine ends the search; the genotype of non-finite alpha means nothing
        genotype = derived["genotype"] = derive()
        columns: dict[str, object] = {"alpha_entropy_normal": alpha_entropy(alphas[0])}
        if len(alphas) > 1:
            columns["alpha_entropy_reduce"] = alpha_entropy(alphas[1])
        entropy = float(np.mean([alpha_entropy(a) for a in alphas]))
        argmaxes = [r["alpha_argmax"] for r in run.record.rows if isinstance(r.get("alpha_argmax"), str)]
        argmaxes.append(diag.argmax_string(alphas))
        columns.update(
            {
                "alpha_entropy_drop": diag.entropy_drop(entropy, num_ops),
                "alpha_argmax": argmaxes[-1],
                "argmax_changes_last3": diag.argmax_changes(argmaxes, 3),
                "skip_count": genotype.skip_count("normal"),
            }
        )
        if isinstance(genotype, Genotype):
            columns["param_free_share"] = diag.parameter_free_share([genotype.normal, genotype.reduce])
        every = int(arch.hessian_every)
        if every and row["epoch"] % every == 0 and row["epoch"] > arch.warmup_epochs:
            columns["hessian_eigenvalue"] = hessian_eigenvalue(supernet, architect, hessian_batch, run)
        columns["genotype"] = str(genotype)
        if term is not None:
            with torch.no_grad():
                columns["expected_latency_ms"] = float(term.expected())
            assert isinstance(supernet, SearchNetwork)  # latency_term refuses the chain
            columns["derived_latency_ms"] = term.derived(genotype, supernet.nodes, supernet.primitives)
        genotype.save(run.dir / GENOTYPES / f"epoch_{row['epoch']:03d}.json")
        if arch.heatmap:
            names = supernet.candidates if isinstance(supernet, ChainNetwork) else supernet.primitives
            alpha_heatmaps(supernet.arch, names, run.dir, kinds)
        return columns

    def figures() -> dict:
        rows = run.record.rows
        last = rows[-1] if rows else {}
        # a resumed run: alpha as restored, if finite; the genotype of the last finite epoch otherwise
        genotype = derived.get("genotype") or (derive() if rows and _finite(supernet.arch) else None)
        out = {
            "genotype": genotype.to_dict() if genotype else None,
            "genotype_str": str(genotype) if genotype else None,
            "arch_steps": arch_steps(rows, int(arch.warmup_epochs)),
            "edges": sum(a.shape[0] for a in alphas),
            **{
                k: last.get(k)
                for k in ("alpha_entropy_drop", "argmax_changes_last3", "skip_count", "param_free_share")
                if k in last
            },
        }
        if term is not None:
            out.update({k: last.get(k) for k in ("expected_latency_ms", "derived_latency_ms")})
        return out

    log.info(
        f"DARTS search: {sum(p.numel() for p in supernet.parameters()):,} weights, "
        f"{type(supernet).__name__}, order {arch.order}"
        f"{f' (unrolled as in the {arch.unrolled})' if arch.order == 'second' else ''}, "
        f"alpha from epoch {int(arch.warmup_epochs) + 1}, "
        f"{'compiled' if step_opts.compile else 'eager'}, "
        f"on {data.name} {data.in_shape}, {run.device}; "
        f"run folder {run.dir}"
    )
    if arch.lr_schedule not in ("constant", "cosine"):
        raise UserError(f"arch.lr_schedule={arch.lr_schedule}: use constant or cosine")
    step = BilevelStep(
        supernet,
        architect,
        arch_batches,
        optimizer,
        run.device,
        int(arch.warmup_epochs),
        graphs,
        arch_lr=lambda epoch: arch.lr_at(epoch, trainer.epochs),
    )
    try:
        summary = trainer.fit(
            supernet,
            optimizer,
            w_loader,
            data.val,
            run=run,
            schedule=schedule,
            generator=w_loader.generator,
            loss_fn=step,
            extra_state={"arch": supernet.arch, "arch_optimizer": architect.optimizer, "arch_batches": arch_batches},
            on_epoch_end=on_epoch_end,
            figures=figures,
        )
    finally:
        ended = run.summary["status"] if run.summary else None  # None: refused, or finished before: left alone
        if ended not in (None, "ok"):  # an extended search's earlier result is no longer its result
            (run.dir / GENOTYPE).unlink(missing_ok=True)
    if ended == "ok":
        chosen = summary.get("hessian_chosen_epoch")  # RobustDARTS' stop: an earlier epoch's cell
        if chosen is not None:
            Genotype.load(run.dir / GENOTYPES / f"epoch_{chosen:03d}.json").save(run.dir / GENOTYPE)
        else:
            (derived.get("genotype") or derive()).save(run.dir / GENOTYPE)
        searching(summary, num_ops, arch, trainer.epochs)
    elif ended is not None:
        folder = run.dir / GENOTYPES
        kept = f"; the genotype of each finite epoch is in {folder}" if folder.is_dir() else ""
        log.warning(f"the search ended {ended}: no {GENOTYPE}{kept}")
    return summary


def arch_steps(rows: list[dict], warmup_epochs: int) -> int:
    """alpha's steps so far: one a weight step, from the end of the warm-up on."""
    if len(rows) <= warmup_epochs:
        return 0
    return int(rows[-1]["iterations"]) - (int(rows[warmup_epochs - 1]["iterations"]) if warmup_epochs else 0)


def hessian_eigenvalue(supernet, architect: Architect, batch: tuple[torch.Tensor, torch.Tensor], run: Run) -> float:
    """The dominant eigenvalue of the Hessian of alpha's objective with respect to alpha, on one fixed batch of
    the architecture split. BatchNorm's running statistics are put back after (measuring must not train)."""
    x, y = (t.to(run.device) for t in batch)
    buffers = {k: v.clone() for k, v in supernet.state_dict().items() if "running" in k or "num_batches" in k}
    generator = torch.Generator().manual_seed((run.seed or 0) + supernet.epoch)
    try:
        return diag.dominant_eigenvalue(lambda: architect.loss(x, y), architect.params, generator=generator)
    finally:
        supernet.load_state_dict(buffers, strict=False)


def searching(summary: dict, num_ops: int, arch: ArchOptions, epochs: int) -> None:
    """One warning when alpha has barely left uniform (the derived cell is then decided by noise), and one when
    the argmax that the cell is read from still changes on more than ``diag.SETTLED`` of the edges."""
    drop, changes = summary.get("alpha_entropy_drop"), summary.get("argmax_changes_last3")
    if drop is not None and drop < diag.SEARCHING:
        log.warning(
            f"alpha barely moved: its entropy fell {100 * drop:.2f}% of ln {num_ops} (uniform) in "
            f"{summary.get('arch_steps')} architecture steps, so the derived cell is close to a random one; give "
            f"alpha more or larger steps: arch.lr (now {arch.lr:g}), trainer.epochs ({epochs}), data.batch_size"
        )
    edges = summary.get("edges") or 0
    if changes is not None and changes > diag.SETTLED * edges:
        log.warning(
            f"alpha's argmax is not settled: {changes} of {edges} edges changed it over the last 3 epochs, so the "
            f"derived cell may change with more epochs; arch.lr_schedule=cosine (now {arch.lr_schedule}) lets it "
            f"settle, trainer.epochs ({epochs}) gives it time"
        )


def _finite(arch) -> bool:
    return all(bool(torch.isfinite(a).all()) for a in arch.parameters())
