"""The training engine: one epoch loop for every command that trains a network.

``Trainer.fit`` owns device placement, mixed precision, the per-iteration lr
schedule, evaluation, the run record (``metrics.csv`` / ``summary.json``),
atomic checkpoints every epoch, exact resume and divergence detection. Commands
whose step differs (a bilevel NAS step, say) pass their own ``loss_fn``.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterable
from pathlib import Path

import torch
import torch.nn.functional as F
from rich import get_console
from rich.table import Table
from torch import nn

from nas_cli.engine import checkpoint
from nas_cli.engine.device import autocast
from nas_cli.engine.progress import TrainingProgress
from nas_cli.engine.schedules import Schedule
from nas_cli.record import RunRecord, versions

log = logging.getLogger(__name__)

LossFn = Callable[[nn.Module, torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]
AVERAGED = ["train_loss", "train_acc", "val_loss", "val_acc"]
CHECKPOINT = Path("checkpoints") / "last.pt"
WEIGHTS = "model.pt"


def cross_entropy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The supervised step's loss: returns (loss, logits)."""
    logits = model(x)
    return F.cross_entropy(logits, y), logits


class Trainer:
    """Fit a model for ``epochs`` epochs, recording every epoch in ``run_dir``.

    Args:
        epochs: number of passes over the training data.
        last_n: the summary's headline figures are means over the last ``last_n`` epochs.
        amp: mixed precision, ``none``, ``bf16`` (CPU or GPU) or ``fp16`` (GPU, with loss scaling).
        grad_clip: clip the global gradient norm to this value (``null``: off).
        checkpoint: write ``checkpoints/last.pt`` after every epoch (needed to resume).
        channels_last: NHWC memory format, faster for convolutions on recent GPUs.
        compile: run the model through ``torch.compile``.
        device: where to train (from ``nas_cli.engine.device.resolve_device``).
        run_dir: the run folder.
        progress: draw a progress bar when stdout is a terminal.
    """

    def __init__(
        self,
        epochs: int = 10,
        last_n: int = 10,
        amp: str = "none",
        grad_clip: float | None = None,
        checkpoint: bool = True,
        channels_last: bool = False,
        compile: bool = False,
        *,
        device: torch.device,
        run_dir: str | Path,
        progress: bool = True,
    ):
        self.epochs = int(epochs)
        self.last_n = int(last_n)
        self.amp = amp
        self.grad_clip = grad_clip
        self.checkpoint = checkpoint
        self.channels_last = channels_last
        self.compile = compile
        self.device = torch.device(device)
        self.run_dir = Path(run_dir)
        self.progress = progress
        autocast(self.device, amp)  # validate the precision now, not after data loading

    # -- one epoch -------------------------------------------------------------------------
    def _to_device(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = x.to(self.device, non_blocking=True)
        if self.channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        return x, y.to(self.device, non_blocking=True)

    def train_epoch(self, model, optimizer, loader, *, scheduler=None, scaler=None, loss_fn: LossFn = cross_entropy,
                    on_batch: Callable[[], None] | None = None) -> dict:
        """One pass over ``loader``; returns mean loss, accuracy, samples and iterations."""
        model.train()
        loss_sum = torch.zeros((), device=self.device)
        correct = torch.zeros((), dtype=torch.long, device=self.device)
        seen = iterations = 0
        scaled = scaler is not None and scaler.is_enabled()
        for x, y in loader:
            x, y = self._to_device(x, y)
            with autocast(self.device, self.amp):
                loss, logits = loss_fn(model, x, y)
            optimizer.zero_grad(set_to_none=True)
            if scaled:
                scaler.scale(loss).backward()
                if self.grad_clip:
                    scaler.unscale_(optimizer)
                    nn.utils.clip_grad_norm_(model.parameters(), self.grad_clip)
                scaler.step(optimizer)
                scaler.update()
            else:
                loss.backward()
                if self.grad_clip:
                    nn.utils.clip_grad_norm_(model.parameters(), self.grad_clip)
                optimizer.step()
            if scheduler is not None:
                scheduler.step()
            # accumulate on the device: no host sync per batch
            loss_sum += loss.detach().float() * y.shape[0]
            correct += (logits.detach().argmax(1) == y).sum()
            seen += y.shape[0]
            iterations += 1
            if on_batch is not None:
                on_batch()
        seen = max(seen, 1)
        return {"train_loss": loss_sum.item() / seen, "train_acc": correct.item() / seen,
                "samples": seen, "iterations": iterations}

    @torch.inference_mode()
    def evaluate(self, model, loader, loss_fn: LossFn = cross_entropy) -> dict:
        """Mean loss and accuracy of ``model`` on ``loader`` in eval mode."""
        model.eval()
        loss_sum = torch.zeros((), device=self.device)
        correct = torch.zeros((), dtype=torch.long, device=self.device)
        seen = 0
        for x, y in loader:
            x, y = self._to_device(x, y)
            with autocast(self.device, self.amp):
                loss, logits = loss_fn(model, x, y)
            loss_sum += loss.float() * y.shape[0]
            correct += (logits.argmax(1) == y).sum()
            seen += y.shape[0]
        seen = max(seen, 1)
        return {"val_loss": loss_sum.item() / seen, "val_acc": correct.item() / seen}

    # -- the whole run ---------------------------------------------------------------------
    def fit(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        train_loader: Iterable,
        val_loader: Iterable,
        *,
        schedule: Schedule | None = None,
        generator: torch.Generator | None = None,
        resume_from: str | Path | None = None,
        loss_fn: LossFn = cross_entropy,
        seed: int | None = None,
    ) -> dict:
        """Train, evaluate every epoch, checkpoint, and return the summary (also written to disk)."""
        model.to(self.device)
        if self.channels_last:
            model.to(memory_format=torch.channels_last)
        scheduler = schedule.build(optimizer, len(train_loader), self.epochs) if schedule else None
        scaler = torch.amp.GradScaler(self.device.type, enabled=self.amp == "fp16")
        record = RunRecord(self.run_dir)
        start_epoch, wall_before = 0, 0.0
        if resume_from is not None:
            state = checkpoint.load(resume_from, map_location=self.device)
            start_epoch, wall_before = self._restore(state, model, optimizer, scheduler, scaler, generator)
            record.rows = list(state["history"])
            record.write_metrics()  # the checkpoint is the truth: drop rows written after it
            log.info(f"resumed from {resume_from} after epoch {start_epoch}")
        net = torch.compile(model) if self.compile else model

        status, error, t0 = "ok", None, time.perf_counter()
        iterations = record.rows[-1]["iterations"] if record.rows else 0
        samples = record.rows[-1]["samples_seen"] if record.rows else 0
        progress = TrainingProgress(self.progress)
        try:
            with progress:
                epochs_bar = progress.add_task("epochs", total=self.epochs, completed=start_epoch, info="")
                batches_bar = progress.add_task("batches", total=len(train_loader), info="")
                for epoch in range(start_epoch, self.epochs):
                    progress.reset(batches_bar, total=len(train_loader))
                    tick = time.perf_counter()
                    stats = self.train_epoch(net, optimizer, train_loader, scheduler=scheduler, scaler=scaler,
                                             loss_fn=loss_fn, on_batch=lambda: progress.tick(batches_bar))
                    train_time = time.perf_counter() - tick
                    stats.update(self.evaluate(net, val_loader, loss_fn))
                    iterations += stats.pop("iterations")
                    epoch_samples = stats.pop("samples")
                    samples += epoch_samples
                    row = {"epoch": epoch + 1, **stats, "lr": optimizer.param_groups[0]["lr"],
                           "iterations": iterations, "samples_seen": samples,
                           "epoch_time_s": time.perf_counter() - tick,
                           "samples_per_s": epoch_samples / max(train_time, 1e-9)}
                    record.log(row)
                    log.info(_epoch_line(row, self.epochs))
                    progress.update(epochs_bar, advance=1, info=f"val_acc {row['val_acc']:.4f}", refresh=True)
                    if not (math.isfinite(row["train_loss"]) and math.isfinite(row["val_loss"])):
                        status = "diverged"
                        log.warning(f"loss is {row['train_loss']} at epoch {epoch + 1}: run diverged, stopping")
                        break
                    if self.checkpoint:
                        checkpoint.save(self.run_dir / CHECKPOINT, self._state(
                            epoch + 1, model, optimizer, scheduler, scaler, generator, record,
                            wall_before + time.perf_counter() - t0))
        except KeyboardInterrupt:
            status = "interrupted"
            raise
        except Exception as ex:
            status, error = "failed", f"{type(ex).__name__}: {ex}"
            raise
        finally:
            summary = self._summary(record, status, error, wall_before + time.perf_counter() - t0, seed)
            record.write_summary(summary)
        if status == "ok":
            checkpoint.save(self.run_dir / WEIGHTS, {"model": model.state_dict()})
        self.print_summary(summary)
        return summary

    # -- state -----------------------------------------------------------------------------
    def _state(self, epoch, model, optimizer, scheduler, scaler, generator, record, wall) -> dict:
        rng = {"torch": torch.get_rng_state()}
        if torch.cuda.is_available():
            rng["cuda"] = torch.cuda.get_rng_state_all()
        if generator is not None:
            rng["loader"] = generator.get_state()
        return {"epoch": epoch, "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict() if scheduler else None,
                "scaler": scaler.state_dict(), "rng": rng, "history": record.rows, "wall_time_s": wall}

    def _restore(self, state, model, optimizer, scheduler, scaler, generator) -> tuple[int, float]:
        from nas_cli.errors import UserError

        try:
            model.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
        except (RuntimeError, ValueError, KeyError) as ex:
            first = str(ex).strip().splitlines()[0]
            raise UserError(f"checkpoint does not match this model/optimizer config: {first}") from ex
        if scheduler is not None and state.get("scheduler"):
            scheduler.load_state_dict(state["scheduler"])
        if state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
        rng = state.get("rng", {})
        if "torch" in rng:
            torch.set_rng_state(rng["torch"].cpu())
        if "cuda" in rng and torch.cuda.is_available():
            torch.cuda.set_rng_state_all([s.cpu() for s in rng["cuda"]])
        if generator is not None and "loader" in rng:
            generator.set_state(rng["loader"].cpu())
        return int(state["epoch"]), float(state.get("wall_time_s", 0.0))

    def _summary(self, record: RunRecord, status: str, error: str | None, wall: float, seed) -> dict:
        rows = record.rows
        last = rows[-1] if rows else {}
        n = min(self.last_n, len(rows)) or 0
        summary = {"status": status, "epochs": len(rows), "last_n": n}
        summary.update(record.last_n_means(AVERAGED, n) if n else {})
        summary.update({f"final_{k}": last[k] for k in AVERAGED if k in last})
        if rows:
            summary["best_val_acc"] = max(r["val_acc"] for r in rows)
        summary.update({
            "iterations": last.get("iterations", 0), "samples_seen": last.get("samples_seen", 0),
            "wall_time_s": wall, "device": str(self.device),
            "device_hours": wall / 3600.0,
            "gpu_hours": wall / 3600.0 if self.device.type == "cuda" else 0.0,
            "seed": seed, "versions": versions(),
        })
        if error:
            summary["error"] = error
        return summary

    @staticmethod
    def print_summary(summary: dict) -> None:
        table = Table(title=f"run summary ({summary['status']})", show_header=True)
        table.add_column("metric")
        table.add_column(f"mean of last {summary['last_n']}", justify="right")
        table.add_column("final", justify="right")
        for key in AVERAGED:
            if key in summary:
                table.add_row(key, f"{summary[key]:.4f}", f"{summary.get('final_' + key, float('nan')):.4f}")
        table.caption = f"{summary['epochs']} epochs, {summary['wall_time_s']:.1f}s on {summary['device']}"
        get_console().print(table)


def _epoch_line(row: dict, epochs: int) -> str:
    return (f"epoch {row['epoch']}/{epochs}  train_loss {row['train_loss']:.4f}  train_acc {row['train_acc']:.4f}  "
            f"val_loss {row['val_loss']:.4f}  val_acc {row['val_acc']:.4f}  lr {row['lr']:.3g}  "
            f"{row['epoch_time_s']:.1f}s  {row['samples_per_s']:.0f} samples/s")
