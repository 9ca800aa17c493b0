"""The training engine: one epoch loop for every command that trains a network.

``Trainer.fit`` owns device placement (of the model, and of in-memory data that asks for it:
``data.on_device``), mixed precision, the per-iteration lr schedule,
explicit penalties, weight averaging (EMA), snapshot ensembles, evaluation, the rows of the
run record (``metrics.csv``, ``steps.csv``), checkpoints, exact resume and divergence
detection, inside the run's lifecycle (``nas_cli.runs.lifecycle.Run``). Commands whose step
differs pass their own ``loss_fn`` (search-darts: the bilevel step; detect: the detection losses), the extra
state it keeps (``extra_state``), per-epoch columns (``on_epoch_end``) and summary figures (``figures``).

A ``loss_fn`` returns ``(loss, logits)``, or ``(loss, logits, parts)`` where ``parts`` names the batch means of
the loss's terms (logged apart as ``train_loss_<name>`` and ``val_loss_<name>``). ``logits`` None means the task
has no class prediction to count (detection): no ``*_acc`` columns, and ``fit``'s ``score`` names the figure
that stands for accuracy (shown on the progress bar, ``best_<score>`` in the summary).

Safe points: after every training batch (SIGINT/SIGTERM there write a mid-epoch checkpoint
that resumes at the next batch, to the same result) and after every epoch's checkpoint.
"""

from __future__ import annotations

import copy
import logging
import math
import signal
import time
from collections.abc import Callable, Iterable, Sized
from dataclasses import dataclass, field
from typing import Any, cast

import torch
from rich import get_console
from rich.table import Table
from torch import nn

from nas_cli.data.resident import place_loaders
from nas_cli.data.resumable import LoaderPass
from nas_cli.engine.averaging import EMA, ensemble_accuracy
from nas_cli.engine.device import autocast, effective_precision, set_determinism
from nas_cli.engine.distributed import Dist, all_reduce_sum, gather
from nas_cli.engine.early_stop import BestCheckpoint, EarlyStopping
from nas_cli.engine.losses import cross_entropy
from nas_cli.engine.optimizers import LBFGS, closure_batches
from nas_cli.engine.progress import TrainingProgress
from nas_cli.engine.regularizers import Regularizer
from nas_cli.engine.schedules import Schedule
from nas_cli.engine.smoothing import smooth
from nas_cli.errors import UserError
from nas_cli.runs import checkpoint, signals
from nas_cli.runs.files import BEST, EMA_WEIGHTS, SNAPSHOTS, STEPS, WEIGHTS
from nas_cli.runs.lifecycle import Run
from nas_cli.runs.record import RunRecord, atomic_write

log = logging.getLogger(__name__)

LossFn = Callable[[nn.Module, torch.Tensor, torch.Tensor], tuple]  # (loss, logits | None[, parts])
AVERAGED = ["train_loss", "train_acc", "val_loss", "val_acc", "val_acc_ema", "train_acc5", "val_acc5"]
TOP5_ABOVE = 10  # top-5 accuracy (``*_acc5``) is recorded for models with more classes than this
HEADLINE = ["train_loss", "train_acc", "val_acc"]  # what report shows first for a training run
DIST_STOP_EVERY = 16  # under torchrun, batches between the processes' agreements on a stop signal


def hits(logits: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Correct top-1 and (more than ``TOP5_ABOVE`` classes, else None) top-5 predictions in a batch, as
    device tensors. Soft labels (MixUp/CutMix) count against their dominant class: the image that
    makes up most of the mixed input, the usual convention for training accuracy under mixing."""
    labels = y.argmax(1) if y.is_floating_point() and y.dim() == 2 else y
    top1 = (logits.argmax(1) == labels).sum()
    if logits.shape[1] <= TOP5_ABOVE:
        return top1, None
    return top1, (logits.topk(5, 1).indices == labels.unsqueeze(1)).any(1).sum()


def scored(out: tuple) -> tuple[torch.Tensor, torch.Tensor | None, dict[str, torch.Tensor]]:
    """A ``loss_fn``'s result as (loss, logits or None, named loss terms)."""
    return (out[0], out[1], out[2]) if len(out) == 3 else (out[0], out[1], {})


class EpochTally:
    """The epoch in progress: each batch's loss, size, correct count and penalty, and where its pass over
    the data stands. Kept per batch on the device and summed at the end: the fewest kernels (and no host
    sync) per step, which is what a small network on a GPU pays for."""

    def __init__(self, loader_pass: LoaderPass, device: torch.device, state: dict | None = None):
        s = state or {}
        self.loader_pass, self.device = loader_pass, device
        self.losses = [torch.tensor(v, device=device) for v in s.get("losses", [])]  # 0-d float32 each
        self.correct = [torch.tensor(v, device=device) for v in s.get("correct", [])]
        self.correct5 = [torch.tensor(v, device=device) for v in s.get("correct5", [])]  # top-5, many classes only
        self.penalties = [torch.tensor(v, device=device) for v in s.get("penalties", [])]
        self.parts = {k: [torch.tensor(v, device=device) for v in vs] for k, vs in s.get("parts", {}).items()}
        self.counts: list[int] = list(s.get("counts", []))
        self.lr = s.get("lr")

    def add(
        self,
        loss: torch.Tensor,
        penalty: torch.Tensor | None,
        logits: torch.Tensor | None,
        y: torch.Tensor,
        lr: float,
        parts: dict[str, torch.Tensor] | None = None,
    ) -> None:
        self.losses.append(loss.detach().float())
        if logits is not None:
            top1, top5 = hits(logits.detach(), y)
            self.correct.append(top1)
            if top5 is not None:
                self.correct5.append(top5)
        for name, value in (parts or {}).items():
            self.parts.setdefault(name, []).append(value.detach().float())
        if penalty is not None:
            self.penalties.append(penalty.detach().float())
        self.counts.append(y.shape[0])
        self.lr = lr

    def sums(self) -> tuple[float, float, int, int | None, int, dict[str, float]]:
        """Loss and penalty summed over samples, correct top-1 and top-5 (None: not counted) predictions,
        samples, and each loss term summed over samples (one host sync)."""
        if not self.losses:
            return 0.0, 0.0, 0, None, 0, {}
        n = torch.tensor(self.counts, device=self.device, dtype=torch.float32)
        zero = torch.zeros((), device=self.device)
        loss = (torch.stack(self.losses) * n).sum()
        penalty = (torch.stack(self.penalties) * n).sum() if self.penalties else zero
        correct = torch.stack(self.correct).sum().float() if self.correct else zero
        parts = [(torch.stack(v) * n).sum() for v in self.parts.values()]
        correct5 = torch.stack(self.correct5).sum().float() if self.correct5 else zero
        loss, penalty, correct, correct5, *parts = torch.stack([loss, penalty, correct, correct5, *parts]).tolist()
        return (
            loss,
            penalty,
            int(correct),
            int(correct5) if self.correct5 else None,
            int(sum(self.counts)),
            dict(zip(self.parts, parts)),
        )

    @property
    def counts_correct(self) -> bool:
        """Whether the task predicts classes (its batches counted correct predictions)."""
        return bool(self.correct) or not self.losses

    def loss_values(self) -> list[float]:
        return torch.stack(self.losses).tolist() if self.losses else []

    def state_dict(self) -> dict:
        return {
            "loader": self.loader_pass.state_dict(),
            "losses": self.loss_values(),
            "correct": torch.stack(self.correct).tolist() if self.correct else [],
            "correct5": torch.stack(self.correct5).tolist() if self.correct5 else [],
            "penalties": torch.stack(self.penalties).tolist() if self.penalties else [],
            "parts": {k: torch.stack(v).tolist() for k, v in self.parts.items()},
            "counts": self.counts,
            "lr": self.lr,
        }


@dataclass
class FitState:
    """Everything one ``fit`` call trains and keeps, saved whole in each checkpoint."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    schedule: Schedule | None
    scheduler: torch.optim.lr_scheduler.LRScheduler | None
    scaler: torch.amp.GradScaler
    generator: torch.Generator | None
    regularizer: Regularizer | None
    ema: EMA | None
    record: RunRecord
    extra: dict = field(default_factory=dict)  # name -> object with state_dict / load_state_dict
    epoch: int = 0  # epochs completed
    tally: EpochTally | None = None  # the epoch in progress (None between epochs)
    saved_tally: dict | None = None  # a mid-epoch checkpoint's tally, until its epoch resumes
    pending_rng: dict | None = None  # a mid-epoch checkpoint's RNG, set once its pass has caught up
    step_losses: list[float] = field(default_factory=list)
    snapshots: list[nn.Module] = field(default_factory=list)
    early_stop: EarlyStopping = field(default_factory=EarlyStopping)  # off unless it has a monitor
    best: BestCheckpoint = field(default_factory=lambda: BestCheckpoint(None))  # off unless it has a monitor


class Trainer:
    """Fit a model for ``epochs`` epochs, recording every epoch in the run's folder.

    Args:
        epochs: number of passes over the training data.
        last_n: the summary's headline figures are means over the last ``last_n`` epochs (1: the
            final epoch; a protocol such as "mean of the last 10 of 100 epochs" sets 10).
        precision: ``fp32``, ``bf16`` autocast (CPU or GPU) or ``fp16`` autocast with loss scaling
            (GPU; fp32 with a note on a CPU).
        grad_clip: clip the global gradient norm to this value (``null``: off).
        checkpoint: write ``checkpoints/last.pt`` after every epoch (and at a stop signal), needed to resume.
        channels_last: NHWC memory format, faster for convolutions on recent GPUs.
        deterministic: deterministic kernels (reproducible) instead of cuDNN's autotuner (fastest).
        compile: run the model through ``torch.compile``.
        loss_window: window (iterations) of the simple moving average of the training loss.
        loss_ema: weight of the newest iteration in the exponential moving average of the loss.
        early_stop: stop when a metrics column stops improving (``EarlyStopping`` or its keyword
            arguments; None: off). The summary says ``stopped_early`` and why; ``status`` stays ok.
        best: keep the best epoch's weights as ``best.pt`` (``BestCheckpoint`` or its keyword arguments;
            None: off, the default here so that internal fits such as search-rl's children write nothing;
            the trainer config turns it on with ``monitor: score``).
        device: where to train (from ``nas_cli.runs.options.resolve_device``).
        progress: draw a progress bar when stdout is a terminal.
        dist: the process group under torchrun: data is sharded by the caller, gradients are
            averaged by DistributedDataParallel, metrics summed over processes, and only rank 0 writes.
    """

    def __init__(
        self,
        epochs: int = 10,
        last_n: int = 1,
        precision: str = "fp32",
        grad_clip: float | None = None,
        checkpoint: bool = True,
        channels_last: bool = False,
        compile: bool = False,
        deterministic: bool = False,
        loss_window: int = 50,
        loss_ema: float = 0.02,
        early_stop: EarlyStopping | dict | None = None,
        best: BestCheckpoint | dict | None = None,
        *,
        device: torch.device,
        progress: bool = True,
        dist: Dist = Dist(),
    ):
        self.epochs = int(epochs)
        self.last_n = int(last_n)
        if self.epochs < 1 or self.last_n < 1:
            raise UserError(f"trainer.epochs={epochs}, trainer.last_n={last_n}: both must be 1 or more")
        self.grad_clip = grad_clip
        self.checkpoint = checkpoint
        self.channels_last = channels_last
        self.compile = compile
        self.loss_window = int(loss_window)
        self.loss_ema = float(loss_ema)
        self.device = torch.device(device)
        self.dist = dist
        self.progress = progress and dist.main
        self.precision = effective_precision(self.device, precision)  # checked now, not after loading data
        self.score = "val_acc"  # fit's ``score``
        self.early_stop = early_stop if isinstance(early_stop, EarlyStopping) else EarlyStopping(**(early_stop or {}))
        off: dict[str, Any] = {"monitor": None}  # no best.pt unless asked for
        self.best = best if isinstance(best, BestCheckpoint) else BestCheckpoint(**(off | dict(best or {})))
        set_determinism(self.device, deterministic)

    # -- one epoch -------------------------------------------------------------------------
    def _to_device(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = x.to(self.device, non_blocking=True)
        if self.channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        return x, y.to(self.device, non_blocking=True)

    def _backward_step(self, total: torch.Tensor, fit: FitState, params) -> None:
        optimizer, scaler = fit.optimizer, fit.scaler
        optimizer.zero_grad(set_to_none=True)
        if scaler.is_enabled():
            scaler.scale(total).backward()
            if self.grad_clip:
                scaler.unscale_(optimizer)
                nn.utils.clip_grad_norm_(params, self.grad_clip)
            scaler.step(optimizer)
            scaler.update()
        else:
            total.backward()
            if self.grad_clip:
                nn.utils.clip_grad_norm_(params, self.grad_clip)
            optimizer.step()

    def _lbfgs_step(self, net, fit: FitState, x, y, loss_fn: LossFn):
        """One L-BFGS step; returns the loss, logits, penalty and loss terms at the parameters it started from."""
        first: list = []

        def closure():
            fit.optimizer.zero_grad(set_to_none=True)
            loss, logits, parts = scored(loss_fn(net, x, y))
            penalty = fit.regularizer.penalty(fit.model) if fit.regularizer else None
            total = loss + penalty if penalty is not None else loss
            total.backward()
            if not first:
                first.extend([loss.detach(), None if logits is None else logits.detach(), penalty, parts])
            return total

        fit.optimizer.step(closure)
        return tuple(first)

    def train_epoch(
        self,
        net: nn.Module,
        fit: FitState,
        loader,
        loss_fn: LossFn = cross_entropy,
        on_batch: Callable[[], None] | None = None,
        run: Run | None = None,
    ) -> dict:
        """One pass over ``loader`` (or the rest of it, when resuming mid-epoch); returns mean loss,
        penalty, accuracy, samples and iterations. With a ``run``, every batch ends at a safe point."""
        net.train()
        fit.tally = tally = EpochTally(
            LoaderPass(loader, fit.generator, (fit.saved_tally or {}).get("loader")), self.device, fit.saved_tally
        )
        fit.saved_tally = None
        if fit.pending_rng is not None:  # the pass has caught up with the checkpoint: continue its randomness
            self._set_rng(fit.pending_rng, fit)
            fit.pending_rng = None
        params = [p for p in fit.model.parameters() if p.requires_grad]
        lbfgs = isinstance(fit.optimizer, LBFGS)
        for x, y in tally.loader_pass:
            x, y = self._to_device(x, y)
            if lbfgs:
                loss, logits, penalty, parts = self._lbfgs_step(net, fit, x, y, loss_fn)
            else:
                with autocast(self.device, self.precision):
                    loss, logits, parts = scored(loss_fn(net, x, y))
                penalty = fit.regularizer.penalty(fit.model) if fit.regularizer else None
                self._backward_step(loss + penalty if penalty is not None else loss, fit, params)
            lr = fit.optimizer.param_groups[0]["lr"]  # the lr this step used
            if fit.scheduler is not None:
                fit.scheduler.step()
            if fit.ema is not None:
                fit.ema.update(fit.model)
            tally.add(loss, penalty, logits, y, lr, parts)
            if on_batch is not None:
                on_batch()
            if run is not None:
                self._stop_point(run, fit, tally.loader_pass.taken)
        fit.tally = None
        fit.step_losses += self._global_step_losses(tally.loss_values(), tally.counts)
        loss_sum, penalty_sum, correct_sum, correct5, seen_here, parts = tally.sums()  # this process's share
        loss_total, penalty_total, correct_total, correct5_total, seen, *part_totals = all_reduce_sum(
            [loss_sum, penalty_sum, correct_sum, correct5 or 0, seen_here, *parts.values()], self.device
        )
        n = max(seen, 1)
        stats = {"train_loss": loss_total / n}
        if tally.counts_correct:
            stats["train_acc"] = correct_total / n
        if correct5 is not None:
            stats["train_acc5"] = correct5_total / n
        stats.update({f"train_loss_{k}": v / n for k, v in zip(parts, part_totals)})
        if fit.regularizer:
            stats["train_penalty"] = penalty_total / n
        return {
            **stats,
            "lr": tally.lr if tally.lr is not None else fit.optimizer.param_groups[0]["lr"],
            "samples": int(seen),
            "iterations": len(tally.counts),
        }

    def _stop_point(self, run: Run, fit: FitState, batch: int | None = None) -> None:
        """Stop here if asked, writing a checkpoint first. Under torchrun every process must stop at the
        same batch: they agree every ``DIST_STOP_EVERY`` batches (an agreement is a host sync)."""
        if self.dist.enabled:
            if batch is not None and batch % DIST_STOP_EVERY:
                return
            asked = all_reduce_sum([1.0 if signals.requested() else 0.0], self.device)[0] > 0
            if asked and signals.requested() is None:
                signals.request(signal.SIGTERM)  # another process was signalled
        run.stop_point(lambda: self._save(run, fit) if self.checkpoint else None)

    def _global_step_losses(self, losses: list[float], counts: list[int]) -> list[float]:
        """Per-iteration training losses; under torchrun the mean over every process's share."""
        if not losses or not self.dist.enabled:
            return losses
        summed = all_reduce_sum([*(v * c for v, c in zip(losses, counts)), *counts], self.device)
        k = len(losses)
        return [a / b for a, b in zip(summed[:k], summed[k:])]

    @torch.inference_mode()
    def evaluate(self, model, loader, loss_fn: LossFn = cross_entropy) -> dict:
        """Mean loss (and its terms) and accuracy of ``model`` on ``loader`` in eval mode."""
        model.eval()
        loss_sum = torch.zeros((), device=self.device)
        correct = torch.zeros((), dtype=torch.long, device=self.device)
        correct5 = torch.zeros((), dtype=torch.long, device=self.device)
        part_sums: dict[str, torch.Tensor] = {}
        seen: float  # a count, summed over processes as a float
        seen, classes, top5 = 0, True, False
        for x, y in loader:
            x, y = self._to_device(x, y)
            with autocast(self.device, self.precision):
                loss, logits, parts = scored(loss_fn(model, x, y))
            loss_sum += loss.float() * y.shape[0]
            for name, value in parts.items():
                part_sums[name] = part_sums.get(name, 0) + value.float() * y.shape[0]
            if logits is None:
                classes = False
            else:
                top1, in_top5 = hits(logits, y)
                correct += top1
                if in_top5 is not None:
                    correct5, top5 = correct5 + in_top5, True
            seen += y.shape[0]
        sums = torch.stack([loss_sum, correct.float(), correct5.float(), *part_sums.values()]).tolist()
        loss_total, correct_total, correct5_total, seen, *part_totals = all_reduce_sum(
            [*sums[:3], seen, *sums[3:]], self.device
        )
        seen = max(seen, 1)
        figures = {
            "val_loss": loss_total / seen,
            **({"val_acc": correct_total / seen} if classes else {}),
            **({"val_acc5": correct5_total / seen} if top5 else {}),
        }
        return {**figures, **{f"val_loss_{k}": v / seen for k, v in zip(part_sums, part_totals)}}

    def test(self, net, fit: FitState, loader, loss_fn: LossFn = cross_entropy) -> dict:
        """The final model (and its weight average) on the test set: ``test_loss``, ``test_acc``."""
        figures = {k.replace("val_", "test_"): v for k, v in self.evaluate(net, loader, loss_fn).items()}
        if fit.ema is not None:
            figures.update(
                {
                    f"{k.replace('val_', 'test_')}_ema": v
                    for k, v in self.evaluate(fit.ema.module, loader, loss_fn).items()
                }
            )
        log.info("test set: " + "  ".join(f"{k} {v:.4f}" for k, v in figures.items()))
        return figures

    # -- the whole run ---------------------------------------------------------------------
    def fit(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        train_loader: Iterable,
        val_loader: Iterable,
        *,
        run: Run,
        schedule: Schedule | None = None,
        generator: torch.Generator | None = None,
        loss_fn: LossFn = cross_entropy,
        regularizer: Regularizer | None = None,
        ema_decay: float | str | None = None,
        extra_state: dict | None = None,
        on_epoch_end: Callable[[dict], dict] | None = None,
        figures: Callable[[], dict] | None = None,
        test_loader: Iterable | None = None,
        score: str = "val_acc",
        eval_loss_fn: LossFn | None = None,
    ) -> dict:
        """Train in ``run``, evaluate every epoch, checkpoint, and return the run's summary.

        ``extra_state``: objects (``state_dict`` / ``load_state_dict``) saved and restored with the
        checkpoint. ``on_epoch_end(row)``: extra columns for the epoch's row. ``figures()``: extra
        summary figures. ``test_loader``: evaluated once, after the last epoch, as ``test_loss`` and
        ``test_acc`` (never during training, so no decision sees it). ``score``: the per-epoch figure (higher
        is better) on the progress bar and in the epoch's log line, ``best_<score>`` in the summary, and what
        ``trainer.best.monitor: score`` keeps as ``best.pt``. ``eval_loss_fn``: the loss of ``val_loss`` and
        ``test_loss`` when it differs from training's (train's label smoothing: plain cross-entropy there).
        """
        done = run.finished()
        if done is not None:  # resumed, with nothing left to do: the finished model, as it was
            if (run.dir / WEIGHTS).is_file():
                model.load_state_dict(checkpoint.load(run.dir / WEIGHTS)["model"])
            return done
        model.to(self.device)
        if self.channels_last:
            model.to(memory_format=torch.channels_last)
        if isinstance(optimizer, LBFGS):
            if self.precision != "fp32" or self.grad_clip:
                raise UserError(
                    "optim=lbfgs cannot be combined with trainer.precision other than fp32 or trainer.grad_clip"
                )
            train_loader = closure_batches(optimizer, train_loader, model)
        # in-memory data asked to (data.on_device) lives on the device from here: batches made there
        place_loaders([train_loader, val_loader, test_loader], self.device)
        fit = FitState(
            model=model,
            optimizer=optimizer,
            schedule=schedule,
            # every loader has a length: TensorLoader, DataLoader, GpuDecoded
            scheduler=schedule.build(optimizer, len(cast(Sized, train_loader)), self.epochs) if schedule else None,
            scaler=torch.amp.GradScaler(self.device.type, enabled=self.precision == "fp16"),
            generator=generator,
            regularizer=regularizer if regularizer is not None and regularizer.active else None,
            ema=EMA(model, ema_decay) if ema_decay is not None else None,
            record=run.record,
            extra=dict(extra_state or {}),
            early_stop=self.early_stop.fresh(),
            best=self.best.fresh(score),
        )
        state = run.load_checkpoint(map_location=self.device)
        if state is not None:
            self._restore(state, fit)
            fit.record.write_metrics()  # the checkpoint is the truth: drop rows written after it
            where = f"epoch {fit.epoch}" + (f", batch {state['tally']['loader']['taken']}" if fit.saved_tally else "")
            log.info(f"resumed from {run.dir} after {where}")
        net = self._wrap(model)
        tested: dict = {}
        self.score = score
        run.figures = lambda: {**self._figures(fit), **tested, **(figures() if figures else {})}
        progress = TrainingProgress(self.progress)
        with run, progress:
            self._epochs(
                net, fit, run, train_loader, val_loader, (loss_fn, eval_loss_fn or loss_fn), progress, on_epoch_end
            )
            if run.status == "ok" and test_loader is not None:
                tested.update(self.test(net, fit, test_loader, eval_loss_fn or loss_fn))
            if run.status == "ok" and self.dist.main:
                checkpoint.save(run.dir / WEIGHTS, {"model": model.state_dict()})
                if fit.ema is not None:
                    checkpoint.save(run.dir / EMA_WEIGHTS, {"model": fit.ema.module.state_dict()})
        assert run.summary is not None  # leaving the run wrote it
        if self.dist.main:
            self.print_summary(run.summary)
        return run.summary

    def _epochs(
        self, net, fit: FitState, run: Run, train_loader, val_loader, loss_fns: tuple, progress, on_epoch_end
    ) -> None:
        loss_fn, eval_loss_fn = loss_fns
        rows = fit.record.rows
        iterations = rows[-1]["iterations"] if rows else 0
        samples = rows[-1]["samples_seen"] if rows else 0
        epochs_bar = progress.add_task("epochs", total=self.epochs, completed=fit.epoch, info="")
        batches_bar = progress.add_task("batches", total=len(train_loader), info="")
        for epoch in range(fit.epoch, self.epochs):
            progress.reset(
                batches_bar,
                total=len(train_loader),
                completed=(fit.saved_tally or {}).get("loader", {}).get("taken", 0),
            )
            for loader in (train_loader, val_loader):  # DistributedSampler reshuffles per epoch
                getattr(getattr(loader, "sampler", None), "set_epoch", lambda e: None)(epoch)
            getattr(fit.model, "set_epoch", lambda e, n: None)(epoch, self.epochs)  # e.g. drop-path
            tick = time.perf_counter()
            stats = self.train_epoch(net, fit, train_loader, loss_fn, lambda: progress.tick(batches_bar), run)
            train_time = time.perf_counter() - tick
            stats.update(self.evaluate(net, val_loader, eval_loss_fn))
            if fit.ema is not None:
                stats.update(
                    {f"{k}_ema": v for k, v in self.evaluate(fit.ema.module, val_loader, eval_loss_fn).items()}
                )
            if fit.schedule is not None and fit.schedule.cycle_ends(epoch + 1, self.epochs):
                stats["val_acc_snapshots"] = self._snapshot(fit, run, epoch + 1, val_loader)
            iterations += stats.pop("iterations")
            lr = stats.pop("lr")
            epoch_samples = stats.pop("samples")
            samples += epoch_samples
            row = {
                "epoch": epoch + 1,
                **stats,
                "lr": lr,
                "iterations": iterations,
                "samples_seen": samples,
                **self._smoothed(fit, run),
            }
            if on_epoch_end is not None:
                row.update(on_epoch_end(row))
            row.update(
                {"epoch_time_s": time.perf_counter() - tick, "samples_per_s": epoch_samples / max(train_time, 1e-9)}
            )
            fit.record.log(row)
            fit.epoch = epoch + 1
            log.info(_epoch_line(row, self.epochs, self.score))
            progress.update(
                epochs_bar, advance=1, info=f"{self.score} {row.get(self.score, math.nan):.4f}", refresh=True
            )
            if not (math.isfinite(row["train_loss"]) and math.isfinite(row["val_loss"])):
                run.status = "diverged"
                log.warning(f"loss is {row['train_loss']} at epoch {epoch + 1}: run diverged, stopping")
                return
            if fit.schedule is not None:
                fit.schedule.epoch_end(row)
            if fit.best.update(row) and self.dist.main:
                assert fit.best.watch is not None  # only a watched monitor has a new best
                checkpoint.save(
                    run.dir / BEST,
                    {
                        "model": fit.model.state_dict(),
                        "epoch": epoch + 1,
                        "monitor": fit.best.watch.monitor,
                        "value": fit.best.watch.best,
                    },
                )
            stop = fit.early_stop.update(row)
            if self.checkpoint:  # before stopping too: a resumed run then finds the decision taken
                self._save(run, fit)
            if stop:
                log.info(f"stopping early after epoch {epoch + 1}: {fit.early_stop.reason()}")
                return
            self._stop_point(run, fit)

    def _wrap(self, model: nn.Module) -> nn.Module:
        """The module the loop calls: compiled and/or DistributedDataParallel around ``model``."""
        # compiling a module gives a module (an OptimizedModule); torch's stubs say only "a callable"
        net = cast(nn.Module, torch.compile(model)) if self.compile else model
        if self.dist.enabled:
            from torch.nn.parallel import DistributedDataParallel

            ids = [self.device.index] if self.device.type == "cuda" else None
            net = DistributedDataParallel(net, device_ids=ids)
        return net

    # -- extras recorded each epoch --------------------------------------------------------
    def _smoothed(self, fit: FitState, run: Run) -> dict:
        """Smoothed training loss at the epoch's last iteration; every iteration goes to steps.csv."""
        if not fit.step_losses:
            return {}
        import pandas as pd

        curves = smooth(pd.Series(fit.step_losses), self.loss_window, self.loss_ema)
        if self.dist.main:
            atomic_write(run.dir / STEPS, lambda tmp: curves.to_csv(tmp, index=False))
        last = curves.iloc[-1]
        # plain floats: checkpoints load with weights_only=True, which refuses numpy scalars
        return {f"train_{k}": float(last[k]) for k in ("loss_sma", "loss_cma", "loss_ema")}

    def _snapshot(self, fit: FitState, run: Run, epoch: int, val_loader) -> float:
        """Keep the model at a cycle's end; return the accuracy of all snapshots' averaged softmax."""
        if self.dist.main:
            checkpoint.save(run.dir / SNAPSHOTS / f"epoch_{epoch}.pt", {"model": fit.model.state_dict()})
        fit.snapshots.append(copy.deepcopy(fit.model).eval())
        return ensemble_accuracy(fit.snapshots, val_loader, self.device)

    # -- state -----------------------------------------------------------------------------
    def _save(self, run: Run, fit: FitState) -> None:
        """The checkpoint: between epochs, or mid-epoch (with the epoch's tally) at a stop signal."""
        rng: dict[str, torch.Tensor | list[torch.Tensor]] = {"torch": torch.get_rng_state()}
        if torch.cuda.is_available():
            rng["cuda"] = torch.cuda.get_rng_state_all()
        if fit.generator is not None:
            rng["loader"] = fit.generator.get_state()
        tally = fit.tally.state_dict() if fit.tally is not None else None
        # mid-epoch under torchrun each process has its own share of the epoch's sums: keep every one
        tallies = gather(tally) if tally is not None and self.dist.enabled else None
        run.save_checkpoint(
            {
                "epoch": fit.epoch,
                "tally": tally,
                "tallies": tallies,
                "model": fit.model.state_dict(),
                "optimizer": fit.optimizer.state_dict(),
                "scheduler": fit.scheduler.state_dict() if fit.scheduler else None,
                "schedule": fit.schedule.state_dict() if fit.schedule else {},
                "scaler": fit.scaler.state_dict(),
                "ema": fit.ema.state_dict() if fit.ema else None,
                "snapshots": [m.state_dict() for m in fit.snapshots],
                "extra": {name: obj.state_dict() for name, obj in fit.extra.items()},
                "early_stop": fit.early_stop.state_dict(),
                "best": fit.best.state_dict(),
                "rng": rng,
                "steps": fit.step_losses,
            }
        )

    def _restore(self, state: dict, fit: FitState) -> None:
        try:
            fit.model.load_state_dict(state["model"])
            fit.optimizer.load_state_dict(state["optimizer"])
            if fit.ema is not None:
                fit.ema.load_state_dict(state["ema"])
            for name, obj in fit.extra.items():
                obj.load_state_dict(state["extra"][name])
        except (RuntimeError, ValueError, KeyError, TypeError) as ex:
            first = str(ex).strip().splitlines()[0]
            raise UserError(f"checkpoint does not match this model/optimizer config: {first}") from ex
        if fit.scheduler is not None and state.get("scheduler"):
            fit.scheduler.load_state_dict(state["scheduler"])
        if fit.schedule is not None:
            fit.schedule.load_state_dict(state.get("schedule") or fit.schedule.state_dict())
        if state.get("scaler"):
            fit.scaler.load_state_dict(state["scaler"])
        for weights in state.get("snapshots", []):
            snapshot = copy.deepcopy(fit.model)
            snapshot.load_state_dict(weights)
            fit.snapshots.append(snapshot.eval())
        fit.early_stop.load_state_dict(state.get("early_stop") or {})
        fit.best.load_state_dict(state.get("best") or {})
        fit.step_losses = list(state.get("steps", []))
        fit.epoch = int(state["epoch"])
        if state.get("tally"):  # stopped mid-epoch: replay the pass up to the batch, then its randomness
            tallies = state.get("tallies") or [state["tally"]]
            if len(tallies) != self.dist.world:
                raise UserError(
                    f"this checkpoint stopped mid-epoch in {len(tallies)} process(es): resume it with "
                    f"{len(tallies)} (torchrun --nproc_per_node={len(tallies)})"
                )
            fit.saved_tally, fit.pending_rng = tallies[self.dist.rank], state.get("rng", {})
        else:
            self._set_rng(state.get("rng", {}), fit)

    @staticmethod
    def _set_rng(rng: dict, fit: FitState) -> None:
        if "torch" in rng:
            torch.set_rng_state(rng["torch"].cpu())
        if "cuda" in rng and torch.cuda.is_available():
            torch.cuda.set_rng_state_all([s.cpu() for s in rng["cuda"]])
        if fit.generator is not None and "loader" in rng:
            fit.generator.set_state(rng["loader"].cpu())

    def _figures(self, fit: FitState) -> dict:
        """The summary's training figures: last-N means, finals, best, snapshots, counts."""
        rows = fit.record.rows
        last = rows[-1] if rows else {}
        n = min(self.last_n, len(rows))
        summary: dict[str, Any] = {
            "epochs": len(rows),
            "last_n": n,
            "averaged_epochs": [rows[-n]["epoch"], rows[-1]["epoch"]] if n else None,
        }
        summary.update(fit.record.last_n_means(AVERAGED + ["train_penalty"], n) if n else {})
        summary.update({f"final_{k}": last[k] for k in AVERAGED if k in last})
        if rows and self.score in rows[-1]:
            summary[f"best_{self.score}"] = max(r[self.score] for r in rows if self.score in r)
        snapshot_accs = [r["val_acc_snapshots"] for r in rows if "val_acc_snapshots" in r]
        if snapshot_accs:
            summary["snapshots"] = len(snapshot_accs)
            summary["snapshot_ensemble_val_acc"] = snapshot_accs[-1]
        summary.update({"iterations": last.get("iterations", 0), "samples_seen": last.get("samples_seen", 0)})
        return {**summary, **fit.best.figures(), **fit.early_stop.figures()}

    @staticmethod
    def print_summary(summary: dict) -> None:
        first, last = summary.get("averaged_epochs") or (None, None)
        table = Table(title=f"run summary ({summary['status']})", show_header=True)
        table.add_column("metric")
        if first == last:  # the headline is the final epoch's
            table.add_column(f"epoch {last}" if last else "final", justify="right")
        else:
            table.add_column(f"mean of epochs {first}-{last}", justify="right")
            table.add_column("final", justify="right")
        for key in AVERAGED:
            if key in summary:
                final = summary.get("final_" + key, float("nan"))
                table.add_row(key, f"{summary[key]:.4f}", *([] if first == last else [f"{final:.4f}"]))
        finals = [
            "test_loss",
            "test_acc",
            "test_acc5",
            "test_acc_ema",
            "snapshot_ensemble_val_acc",
            "ensemble_val_acc",
            "ensemble_test_acc",
            *summary.get("headline", []),
        ]  # a command's own headline figures (detect: mAP)
        for key in dict.fromkeys(k for k in finals if k not in AVERAGED):
            value = summary.get(key)
            if isinstance(value, (int, float)) and not isinstance(value, bool):  # counts too (skip_count)
                shown = f"{value:.4f}" if isinstance(value, float) else str(value)
                table.add_row(key, *([""] if first != last else []), shown)
        table.caption = f"{summary.get('epochs', 0)} epochs, {summary['wall_time_s']:.1f}s on {summary['device']}" + (
            f"; validation: {summary['val_split']}" if summary.get("val_split") else ""
        )
        get_console().print(table)


def _epoch_line(row: dict, epochs: int, score: str = "val_acc") -> str:
    shown = ["train_loss", "train_acc", "val_loss", score, "val_acc_ema", "val_acc_snapshots", "train_penalty"]
    figures = "".join(f"  {k} {row[k]:.4f}" for k in dict.fromkeys(shown) if k in row)
    return (
        f"epoch {row['epoch']}/{epochs}{figures}  lr {row['lr']:.3g}  "
        f"{row['epoch_time_s']:.1f}s  {row['samples_per_s']:.0f} samples/s"
    )
