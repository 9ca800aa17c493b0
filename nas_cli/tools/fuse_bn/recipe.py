"""``nas-cli fuse-bn``'s recipe: fold BatchNorm into the layer before it, check the outputs, measure the gain.

``fuse`` loads the source (a nas-cli run, rebuilt from its ``.hydra/config.yaml`` and checked on its own
validation images, or a torchvision model by name, checked on a seeded random batch), folds it with
``nas_cli.tools.fuse_bn.fold.fuse_bn``, compares both models' outputs in full fp32, optionally exports the
fused model (ONNX or TorchScript) and checks the file at every batch size, times the models per batch size
and writes ``fused.pt``, ``metrics.csv`` and ``summary.json``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch
from hydra.utils import instantiate
from rich import get_console
from torch.nn.modules.batchnorm import _BatchNorm

from nas_cli.engine.device import full_precision
from nas_cli.engine.latency import median_latencies, n_params
from nas_cli.engine.progress import TrainingProgress
from nas_cli.engine.transfer import weights_file
from nas_cli.errors import UserError
from nas_cli.report.format import to_rich
from nas_cli.runs import checkpoint, saved_config
from nas_cli.runs.files import CONFIG, FUSED
from nas_cli.runs.options import RunOptions
from nas_cli.tools import export as exporter
from nas_cli.tools.fuse_bn.fold import FuseReport, fuse_bn

log = logging.getLogger(__name__)
TORCHVISION = "torchvision:"
HEADLINE = ["pairs_fused", "pairs_skipped", "max_rel_diff"]
# export=FORMAT's file, beside fused.pt (the fused model's state_dict, written whatever the export)
EXPORTED = {"onnx": "fused.onnx", "torchscript": "fused_torchscript.pt"}
LATENCY_KEY = {"onnx": "onnxruntime", "torchscript": "torchscript"}  # its latency column: latency_ms_<this>


@dataclass
class Source:
    """What to fuse: a nas-cli run (folder or .pt) or ``torchvision:NAME`` (with these options)."""

    source: str
    weights: str | None = None  # torchvision only: a state_dict file (otherwise random weights and BN statistics)
    num_classes: int = 1000  # torchvision only
    input_shape: tuple[int, ...] = (3, 224, 224)  # torchvision only: the check's and the timing's input
    pick: str = "last"  # a run folder only: its final model.pt (last) or its best epoch's best.pt (best)


@dataclass
class FuseOptions:
    """How the fused model is checked, exported and timed (conf/fuse_bn.yaml holds the defaults).

    ``export``: ``onnx``, ``torchscript`` (a key of ``EXPORTED``) or None for ``fused.pt`` alone;
    ``export_rtol``: the largest max |torch - file| / max |torch| a written file may show.
    """

    batch_sizes: list[int]
    repeats: int
    scale_warn: float
    export: str | None
    export_opset: int
    export_rtol: float


def fuse(source: Source, opts: RunOptions, options: FuseOptions, *, command: str) -> dict:
    """The run ``command`` in ``opts``'s folder: fuse ``source``, check it, export it, time it; the summary."""
    fmt, batch_sizes = options.export, options.batch_sizes
    if fmt == "onnx":
        exporter.require_onnx()  # a missing extra is a one-line error before any work
    model, inputs, described = load_source(source, max(batch_sizes), opts.seed)
    run = opts.run(command, headline=HEADLINE)
    done = run.finished()
    if done is not None:
        return done
    figures: dict = {}
    run.figures = lambda: figures
    with run:
        model, inputs = model.to(opts.device).eval(), inputs.to(opts.device)
        fused, report = fuse_bn(model, scale_warn=options.scale_warn)
        with torch.inference_mode(), full_precision():  # the same figure on every device: no TF32 rounding
            expected, got = model(inputs), fused(inputs)
        max_abs = (expected - got).abs().max().item()
        figures.update(
            {
                "source": described,
                "method": report.method,
                "pairs_fused": len(report.fused),
                "pairs_skipped": len(report.skipped),
                "large_scale_channels": sum(p.large_scale_channels for p in report.fused),
                "max_abs_diff": max_abs,
                "max_rel_diff": max_abs / max(expected.abs().max().item(), 1e-12),
                "check_precision": "fp32, TF32 off",
                "params_before": n_params(model),
                "params_after": n_params(fused),
            }
        )
        timed = {"unfused": model, "fused": fused}
        if fmt is not None:
            timed[LATENCY_KEY[fmt]] = export_and_check(fused, inputs, run.dir, fmt, options, figures)
        with TrainingProgress(opts.progress) as bar:
            task_id = bar.add_task("timing", total=len(batch_sizes), info="")
            for size in batch_sizes:
                copies = -(-size // len(inputs))  # too few real inputs: repeat them
                x = inputs.repeat(copies, *[1] * (inputs.dim() - 1))[:size]
                times = median_latencies(timed, x, repeats=options.repeats)
                row = {
                    "batch_size": size,
                    **{f"latency_ms_{k}": 1e3 * t for k, t in times.items()},
                    "speedup": times["unfused"] / times["fused"],
                }
                if fmt is not None:  # every batch size runs through the file's dynamic batch axis: check each
                    row["export_max_rel_diff"] = check_export(
                        fused, timed[LATENCY_KEY[fmt]], x, run.dir / EXPORTED[fmt], options.export_rtol
                    )
                    figures["export_max_rel_diff"] = max(figures["export_max_rel_diff"], row["export_max_rel_diff"])
                run.record.log(row)
                figures[f"speedup_bs{size}"] = times["unfused"] / times["fused"]
                bar.tick(task_id)
                run.stop_point()
        checkpoint.save(run.dir / FUSED, {"model": fused.state_dict(), "source": source.source})
    print_report(report, run.summary, run.record.rows)
    return run.summary


def export_and_check(
    fused: torch.nn.Module, inputs: torch.Tensor, run_dir: Path, fmt: str, options: FuseOptions, figures: dict
) -> torch.nn.Module:
    """Write the fused model as ``fmt`` and check the file on the check's inputs (see ``check_export``).

    Returns the loaded file as a module, so it is timed beside torch's models.
    """
    opset = options.export_opset
    path = exporter.export(fused, inputs, run_dir / EXPORTED[fmt], fmt, opset=opset)
    runner, runs_on = exporter.load_exported(path, fmt, inputs.device)
    figures.update(
        {
            "export": fmt,
            "export_file": path.name,
            "export_runtime": runs_on,
            **({"export_opset": opset} if fmt == "onnx" else {}),
        }
    )
    figures["export_max_rel_diff"] = check_export(fused, runner, inputs, path, options.export_rtol)
    return runner


def check_export(
    fused: torch.nn.Module, runner: torch.nn.Module, x: torch.Tensor, path: Path, tolerance: float
) -> float:
    """max |torch - file| / max |torch| on ``x`` in full fp32; past ``tolerance`` (``export_rtol``) the file goes
    and the run fails."""
    with torch.inference_mode(), full_precision():
        diff = exporter.max_rel_diff(fused(x), runner(x))
    if not diff <= tolerance:  # also catches NaN
        path.unlink(missing_ok=True)  # a file that fails its check is not left for someone to deploy
        raise UserError(
            f"export: {path.name} differs from the fused torch model by {diff:.3g} (max difference / "
            f"max |output|, batch {len(x)}), more than export_rtol={tolerance:g}; the file was removed"
        )
    return diff


def load_source(source: Source, batch: int, seed: int) -> tuple[torch.nn.Module, torch.Tensor, str]:
    """The model to fuse and a batch of inputs to check it on."""
    name = source.source
    if name.startswith(TORCHVISION):
        return _torchvision(name[len(TORCHVISION) :], source, batch, seed)
    if not Path(name).exists():
        raise UserError(f"source={name}: no such run folder or file (or use torchvision:NAME)")
    weights = weights_file(name, source.pick, "source")
    run_dir = weights.parent.parent if weights.parent.name == "checkpoints" else weights.parent
    config_file = run_dir / CONFIG
    if not config_file.is_file():
        raise UserError(f"source={name}: no {config_file} to rebuild the model from (is it a nas-cli run?)")
    # the run may come from elsewhere: its config is data, rebuilt only from nas-cli's own targets
    where = f"source={name}: {config_file}"
    run_cfg = saved_config.load(config_file, where)
    data_node = saved_config.checked_node(run_cfg, "data", where)
    model_node = saved_config.checked_node(run_cfg, "model", where)
    seed = saved_config.plain_value(run_cfg, "seed", where, default=0)
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise UserError(f"{where}: seed={seed!r} is not a whole number; {saved_config.REFUSED}")
    data = instantiate(data_node, seed=seed)
    model = instantiate(model_node, in_shape=data.in_shape, num_classes=data.num_classes)
    try:
        model.load_state_dict(checkpoint.load(weights)["model"])
    except (KeyError, RuntimeError) as ex:
        raise UserError(f"source={name}: {weights} does not fit the model of {config_file}") from ex
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
    """Seeded running statistics (and affine weights) for every BatchNorm of ``model`` that tracks them."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        # the two statistics are kept, or not, together: testing both tells the type checker so
        if isinstance(m, _BatchNorm) and m.running_mean is not None and m.running_var is not None:
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
    """The pairs folded or skipped, then the figures of fused vs unfused, as two tables on the terminal."""
    console = get_console()
    pairs = [
        [
            p.layer,
            p.bn,
            f"fused ({p.kind})"
            + (f", {p.large_scale_channels} large-scale channels" if p.large_scale_channels else ""),
        ]
        for p in report.fused
    ] + [[s.layer, s.bn, f"skipped: {s.reason}"] for s in report.skipped]
    folded = pd.DataFrame(pairs, columns=["layer", "batchnorm", "result"], dtype=object)
    console.print(to_rich(folded, f"BatchNorm folding ({report.method})"))
    numbers = [
        ["max |output difference|", f"{summary['max_abs_diff']:.3g}"],
        [
            "max difference / max |output|",
            f"{summary['max_rel_diff']:.3g} ({summary.get('check_precision', 'fp32')})",
        ],
        ["parameters", f"{summary['params_before']:,} -> {summary['params_after']:,}"],
    ]
    if "export" in summary:
        numbers.append(
            [
                f"{summary['export_file']} ({summary['export_runtime']}) vs fused torch",
                f"{summary['export_max_rel_diff']:.3g} (max difference / max |output|)",
            ]
        )
    exported = next((k for k in LATENCY_KEY.values() if rows and f"latency_ms_{k}" in rows[0]), None)
    for r in rows:
        extra = f", {exported} {r[f'latency_ms_{exported}']:.2f} ms" if exported else ""
        numbers.append(
            [
                f"latency, batch {r['batch_size']}",
                f"{r['latency_ms_unfused']:.2f} ms -> {r['latency_ms_fused']:.2f} ms ({r['speedup']:.2f}x)" + extra,
            ]
        )
    table = pd.DataFrame(numbers, columns=["figure", "value"], dtype=object)
    console.print(to_rich(table, "fused vs unfused", justify={"value": "right"}))
