"""``nas-cli fuse-bn``: fold BatchNorm into the layer before it, check the outputs, measure the gain.

The source is a nas-cli run (rebuilt from its ``.hydra/config.yaml``, checked on its
own validation images) or a torchvision model by name (checked on a seeded random batch).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from rich import get_console
from rich.table import Table

from nas_cli.engine import checkpoint
from nas_cli.engine.device import full_precision, seed_everything
from nas_cli.engine.latency import median_latencies, n_params
from nas_cli.engine.progress import TrainingProgress
from nas_cli.engine.transfer import weights_file
from nas_cli.errors import UserError
from nas_cli.runs.files import CONFIG, FUSED
from nas_cli.runs.options import RunOptions
from nas_cli.tools.fuse_bn import FuseReport, fuse_bn

log = logging.getLogger(__name__)
TORCHVISION = "torchvision:"
COMMAND = "fuse-bn"
HEADLINE = ["pairs_fused", "pairs_skipped", "max_rel_diff"]


@dataclass
class Source:
    """What to fuse: a nas-cli run (folder or .pt) or ``torchvision:NAME`` (with these options)."""

    source: str
    weights: str | None = None  # torchvision only: a state_dict file (otherwise random weights and BN statistics)
    num_classes: int = 1000  # torchvision only
    input_shape: tuple[int, ...] = (3, 224, 224)  # torchvision only: the check's and the timing's input


def task(cfg: DictConfig) -> dict:
    opts = RunOptions.from_config(cfg)
    seed_everything(opts.seed)
    batch_sizes = [int(b) for b in cfg.batch_sizes]
    source = Source(str(cfg.source), cfg.weights, int(cfg.num_classes), tuple(cfg.input_shape))
    model, inputs, described = load_source(source, max(batch_sizes), opts.seed)
    run = opts.run(COMMAND, headline=HEADLINE)
    done = run.finished()
    if done is not None:
        return done
    figures: dict = {}
    run.figures = lambda: figures
    with run:
        model, inputs = model.to(opts.device).eval(), inputs.to(opts.device)
        fused, report = fuse_bn(model, scale_warn=float(cfg.scale_warn))
        with torch.inference_mode(), full_precision():  # the same figure on every device: no TF32 rounding
            expected, got = model(inputs), fused(inputs)
        max_abs = (expected - got).abs().max().item()
        figures.update({
            "source": described, "method": report.method, "pairs_fused": len(report.fused),
            "pairs_skipped": len(report.skipped),
            "large_scale_channels": sum(p.large_scale_channels for p in report.fused),
            "max_abs_diff": max_abs, "max_rel_diff": max_abs / max(expected.abs().max().item(), 1e-12),
            "check_precision": "fp32, TF32 off",
            "params_before": n_params(model), "params_after": n_params(fused)})
        with TrainingProgress(opts.progress) as bar:
            task_id = bar.add_task("timing", total=len(batch_sizes), info="")
            for size in batch_sizes:
                copies = -(-size // len(inputs))  # too few real inputs: repeat them
                x = inputs.repeat(copies, *[1] * (inputs.dim() - 1))[:size]
                times = median_latencies({"unfused": model, "fused": fused}, x, repeats=int(cfg.repeats))
                run.record.log({"batch_size": size, "latency_ms_unfused": 1e3 * times["unfused"],
                                "latency_ms_fused": 1e3 * times["fused"], "speedup": times["unfused"] / times["fused"]})
                figures[f"speedup_bs{size}"] = times["unfused"] / times["fused"]
                bar.tick(task_id)
                run.stop_point()
        checkpoint.save(run.dir / FUSED, {"model": fused.state_dict(), "source": source.source})
    print_report(report, run.summary, run.record.rows)
    return run.summary


def load_source(source: Source, batch: int, seed: int) -> tuple[torch.nn.Module, torch.Tensor, str]:
    """The model to fuse and a batch of inputs to check it on."""
    name = source.source
    if name.startswith(TORCHVISION):
        return _torchvision(name[len(TORCHVISION):], source, batch, seed)
    if not Path(name).exists():
        raise UserError(f"source={name}: no such run folder or file (or use torchvision:NAME)")
    weights = weights_file(name)
    run_dir = weights.parent.parent if weights.parent.name == "checkpoints" else weights.parent
    config_file = run_dir / CONFIG
    if not config_file.is_file():
        raise UserError(f"source={name}: no {config_file} to rebuild the model from (is it a nas-cli run?)")
    run_cfg = OmegaConf.load(config_file)
    data = instantiate(run_cfg.data, seed=run_cfg.get("seed", 0))
    model = instantiate(run_cfg.model, in_shape=data.in_shape, num_classes=data.num_classes)
    model.load_state_dict(checkpoint.load(weights)["model"])
    images, seen = [], 0
    for x, _ in data.val:  # real validation images
        images.append(x)
        seen += len(x)
        if seen >= batch:
            break
    return model, torch.cat(images)[:batch], f"{weights} ({type(model).__name__} on {data.name})"


def _torchvision(name: str, source: Source, batch: int, seed: int):
    from torchvision.models import get_model, list_models

    if name not in list_models():
        raise UserError(f"unknown torchvision model '{name}' (e.g. resnet18, mobilenet_v2, vgg11_bn)")
    model = get_model(name, weights=None, num_classes=source.num_classes)
    if source.weights:
        model.load_state_dict(_state_dict(source.weights))
    else:  # fresh statistics (mean 0, var 1) make folding nearly the identity: give it something to get wrong
        randomize_bn_stats(model, seed)
    generator = torch.Generator().manual_seed(seed)
    inputs = torch.randn(batch, *source.input_shape, generator=generator)
    weights = f"weights {source.weights}" if source.weights else "random weights"
    return model, inputs, f"torchvision {name} ({weights})"


def randomize_bn_stats(model: torch.nn.Module, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm) and m.running_mean is not None:
            m.running_mean.copy_(0.1 * torch.randn(m.num_features, generator=g))
            m.running_var.copy_(0.5 + torch.rand(m.num_features, generator=g))
            if m.affine:
                m.weight.data.copy_(1 + 0.2 * torch.randn(m.num_features, generator=g))
                m.bias.data.copy_(0.1 * torch.randn(m.num_features, generator=g))


def _state_dict(path) -> dict:
    """A plain state_dict file, or a nas-cli checkpoint holding one under 'model'."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as ex:
        raise UserError(f"weights={path}: cannot read a state_dict from it ({type(ex).__name__})") from ex
    if not isinstance(state, dict):
        raise UserError(f"weights={path}: expected a state_dict, found {type(state).__name__}")
    return state.get("model", state)


def print_report(report: FuseReport, summary: dict, rows: list[dict]) -> None:
    console = get_console()
    pairs = Table(title=f"BatchNorm folding ({report.method})")
    for col in ("layer", "batchnorm", "result"):
        pairs.add_column(col)
    for p in report.fused:
        pairs.add_row(p.layer, p.bn, f"fused ({p.kind})" + (f", {p.large_scale_channels} large-scale channels"
                                                             if p.large_scale_channels else ""))
    for s in report.skipped:
        pairs.add_row(s.layer, s.bn, f"skipped: {s.reason}")
    console.print(pairs)
    numbers = Table(title="fused vs unfused")
    numbers.add_column("figure")
    numbers.add_column("value", justify="right")
    numbers.add_row("max |output difference|", f"{summary['max_abs_diff']:.3g}")
    numbers.add_row("max difference / max |output|", f"{summary['max_rel_diff']:.3g} ({summary.get('check_precision', 'fp32')})")
    numbers.add_row("parameters", f"{summary['params_before']:,} -> {summary['params_after']:,}")
    for r in rows:
        numbers.add_row(f"latency, batch {r['batch_size']}",
                        f"{r['latency_ms_unfused']:.2f} ms -> {r['latency_ms_fused']:.2f} ms ({r['speedup']:.2f}x)")
    console.print(numbers)
