"""``nas-cli fuse-bn``: fold BatchNorm into the layer before it, check the outputs, measure the gain.

The source is a nas-cli run (rebuilt from its ``.hydra/config.yaml``, checked on its
own validation images) or a torchvision model by name (checked on a seeded random batch).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import torch
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from rich import get_console
from rich.table import Table

from nas_cli.engine import checkpoint
from nas_cli.engine.device import resolve_device, seed_everything
from nas_cli.engine.transfer import weights_file
from nas_cli.errors import UserError
from nas_cli.record import RunRecord, run_cost
from nas_cli.tools.fuse_bn import FuseReport, fuse_bn
from nas_cli.tools.latency import median_latencies, n_params

log = logging.getLogger(__name__)
TORCHVISION = "torchvision:"


def task(cfg: DictConfig) -> dict:
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    device = resolve_device(cfg.device)
    seed_everything(cfg.seed)
    start = time.perf_counter()
    batch = max(cfg.batch_sizes)
    model, inputs, described = load_source(cfg, batch)
    model, inputs = model.to(device).eval(), inputs.to(device)
    fused, report = fuse_bn(model, scale_warn=cfg.scale_warn)
    with torch.inference_mode():
        expected, got = model(inputs), fused(inputs)
    max_abs = (expected - got).abs().max().item()
    max_rel = max_abs / max(expected.abs().max().item(), 1e-12)

    record = RunRecord(run_dir)
    for size in cfg.batch_sizes:
        copies = -(-size // len(inputs))  # too few real inputs: repeat them
        x = inputs.repeat(copies, *[1] * (inputs.dim() - 1))[:size]
        times = median_latencies({"unfused": model, "fused": fused}, x, repeats=cfg.repeats)
        record.log({"batch_size": size, "latency_ms_unfused": 1e3 * times["unfused"],
                    "latency_ms_fused": 1e3 * times["fused"], "speedup": times["unfused"] / times["fused"]})
    checkpoint.save(run_dir / "fused.pt", {"model": fused.state_dict(), "source": str(cfg.source)})
    wall = time.perf_counter() - start
    summary = {
        "status": "ok", "source": described, "method": report.method,
        "pairs_fused": len(report.fused), "pairs_skipped": len(report.skipped),
        "large_scale_channels": sum(p.large_scale_channels for p in report.fused),
        "max_abs_diff": max_abs, "max_rel_diff": max_rel,
        "params_before": n_params(model), "params_after": n_params(fused),
        **{f"speedup_bs{r['batch_size']}": r["speedup"] for r in record.rows},
        **run_cost(wall, device, cfg.seed),
    }
    record.write_summary(summary)
    print_report(report, summary, record.rows)
    return summary


def load_source(cfg: DictConfig, batch: int) -> tuple[torch.nn.Module, torch.Tensor, str]:
    """The model to fuse and a batch of inputs to check it on."""
    source = str(cfg.source)
    if source.startswith(TORCHVISION):
        return _torchvision(source[len(TORCHVISION):], cfg, batch)
    if not Path(source).exists():
        raise UserError(f"source={source}: no such run folder or file (or use torchvision:NAME)")
    weights = weights_file(source)
    run_dir = weights.parent.parent if weights.parent.name == "checkpoints" else weights.parent
    config_file = run_dir / ".hydra" / "config.yaml"
    if not config_file.is_file():
        raise UserError(f"source={source}: no {config_file} to rebuild the model from (is it a nas-cli run?)")
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


def _torchvision(name: str, cfg: DictConfig, batch: int):
    from torchvision.models import get_model, list_models

    if name not in list_models():
        raise UserError(f"unknown torchvision model '{name}' (e.g. resnet18, mobilenet_v2, vgg11_bn)")
    model = get_model(name, weights=None, num_classes=cfg.num_classes)
    if cfg.weights:
        model.load_state_dict(_state_dict(cfg.weights))
    else:  # fresh statistics (mean 0, var 1) make folding nearly the identity: give it something to get wrong
        randomize_bn_stats(model, cfg.seed)
    generator = torch.Generator().manual_seed(cfg.seed)
    inputs = torch.randn(batch, *cfg.input_shape, generator=generator)
    return model, inputs, f"torchvision {name} ({'weights ' + str(cfg.weights) if cfg.weights else 'random weights'})"


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
    numbers.add_row("max difference / max |output|", f"{summary['max_rel_diff']:.3g}")
    numbers.add_row("parameters", f"{summary['params_before']:,} -> {summary['params_after']:,}")
    for r in rows:
        numbers.add_row(f"latency, batch {r['batch_size']}",
                        f"{r['latency_ms_unfused']:.2f} ms -> {r['latency_ms_fused']:.2f} ms ({r['speedup']:.2f}x)")
    console.print(numbers)
