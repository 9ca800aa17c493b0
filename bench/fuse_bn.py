"""BatchNorm folding: eval latency before/after, and coverage against torch.fx's own ``fuse``.

For each model: how many BatchNorms exist, how many ``torch.fx.experimental.optimization.fuse``
removes, how many nas-cli's ``fuse_bn`` removes, and the median eval latency of the
unfused model, fx's fused model and ours at batch 1 and 32 (CPU, one process, models
timed in turns). Also checks that our fused outputs match (max relative difference).

    python bench/fuse_bn.py [--size 224] [--repeats 10]
"""

from __future__ import annotations

import argparse

import torch
from rich.console import Console
from rich.table import Table
from torch import nn
from torch.fx.experimental.optimization import fuse as fx_fuse

from nas_cli.engine.latency import median_latencies
from nas_cli.models.mlp import MLP
from nas_cli.models.resnet import resnet18
from nas_cli.tools.fuse_bn.fold import fuse_bn


def count_bn(model: nn.Module) -> int:
    return sum(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


def randomize_bn(model: nn.Module) -> nn.Module:
    """Non-trivial running statistics, so folding has something to get wrong."""
    g = torch.Generator().manual_seed(0)
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
    return model.eval()


def decoder() -> nn.Module:
    """A small upsampling head: ConvTranspose -> BatchNorm pairs, which fx's fuse leaves alone."""
    return nn.Sequential(
        nn.ConvTranspose2d(3, 16, 4, stride=2, padding=1),
        nn.BatchNorm2d(16),
        nn.ReLU(),
        nn.ConvTranspose2d(16, 8, 4, stride=2, padding=1, groups=2),
        nn.BatchNorm2d(8),
    )


def main() -> None:
    from torchvision.models import mobilenet_v2
    from torchvision.models import resnet18 as tv_resnet18

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=224, help="input side of the torchvision models")
    parser.add_argument("--repeats", type=int, default=10)
    args = parser.parse_args()
    models = {
        "CIFAR ResNet-18": (resnet18((3, 32, 32), 10), (3, 32, 32)),
        "torchvision resnet18": (tv_resnet18(weights=None), (3, args.size, args.size)),
        "torchvision mobilenet_v2": (mobilenet_v2(weights=None), (3, args.size, args.size)),
        "MLP with BatchNorm1d": (MLP((1, 28, 28), 10, width=512, depth=3, batchnorm=True), (1, 28, 28)),
        "ConvTranspose decoder": (decoder(), (3, 32, 32)),
    }
    table = Table(title=f"fuse-bn vs torch.fx fuse (CPU, {torch.get_num_threads()} threads, median of {args.repeats})")
    for col in (
        "model",
        "BN",
        "fx removes",
        "ours removes",
        "max rel diff",
        "batch",
        "unfused ms",
        "fx ms",
        "ours ms",
        "ours speed-up",
        "ours / fx",
    ):
        table.add_column(col, justify="left" if col == "model" else "right")
    for name, (model, shape) in models.items():
        model = randomize_bn(model)
        ours, report = fuse_bn(model)
        theirs = fx_fuse(model)
        x = torch.randn(32, *shape, generator=torch.Generator().manual_seed(1))
        with torch.inference_mode():
            ref = model(x)
            rel = ((ours(x) - ref).abs().max() / ref.abs().max()).item()
        for batch in (1, 32):
            t = median_latencies({"unfused": model, "fx": theirs, "ours": ours}, x[:batch], repeats=args.repeats)
            table.add_row(
                name if batch == 1 else "",
                str(count_bn(model)) if batch == 1 else "",
                str(count_bn(model) - count_bn(theirs)) if batch == 1 else "",
                str(report.n_bn_removed) if batch == 1 else "",
                f"{rel:.1e}" if batch == 1 else "",
                str(batch),
                f"{1e3 * t['unfused']:.2f}",
                f"{1e3 * t['fx']:.2f}",
                f"{1e3 * t['ours']:.2f}",
                f"{t['unfused'] / t['ours']:.2f}x",
                f"{t['ours'] / t['fx']:.2f}",
            )
    Console(width=170).print(table)


if __name__ == "__main__":
    main()
