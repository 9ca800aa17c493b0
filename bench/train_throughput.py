"""Training throughput of the engine's speed options on one model and batch, as ratios to fp32.

fp32, bf16 autocast, channels_last, and torch.compile, each timed over the same
training steps in one process (rounds alternate so machine noise hits all alike).
On a GPU it also prints each as a fraction of the GPU's peak bf16 FLOP/s (pass
--peak-tflops; the model's FLOPs are counted with torch.utils.flop_counter).

    python bench/train_throughput.py [--width 16] [--batch 64] [--steps 10] [--rounds 3]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F
from rich.console import Console
from rich.table import Table

from nas_cli.engine.device import autocast, resolve_device
from nas_cli.models.resnet import resnet18

VARIANTS = {"fp32": {}, "bf16": {"precision": "bf16"}, "channels_last": {"channels_last": True},
            "compile": {"compile": True}}


def make(variant: dict, width: int, device):
    torch.manual_seed(0)
    model = resnet18((3, 32, 32), 10, width=width).to(device)
    if variant.get("channels_last"):
        model = model.to(memory_format=torch.channels_last)
    net = torch.compile(model) if variant.get("compile") else model
    return model, net, torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)


def steps(variant, net, opt, x, y, n, device) -> float:
    if variant.get("channels_last"):
        x = x.contiguous(memory_format=torch.channels_last)
    start = time.perf_counter()
    for _ in range(n):
        with autocast(device, variant.get("precision", "fp32")):
            loss = F.cross_entropy(net(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def train_flops(width: int, batch: int, device) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    model, _, _ = make({}, width, device)
    x = torch.randn(batch, 3, 32, 32, device=device)
    with FlopCounterMode(display=False) as counter:
        F.cross_entropy(model(x), torch.zeros(batch, dtype=torch.long, device=device)).backward()
    return counter.get_total_flops()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--width", type=int, default=16)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--peak-tflops", type=float, default=None, help="the GPU's peak (e.g. 990 for H100 bf16)")
    args = parser.parse_args()
    device = resolve_device(args.device)
    x = torch.randn(args.batch, 3, 32, 32, device=device)
    y = torch.randint(0, 10, (args.batch,), device=device)
    runs = {name: make(v, args.width, device) for name, v in VARIANTS.items()}
    for name, (_, net, opt) in runs.items():  # warm-up: compilation, allocator, autotuning
        steps(VARIANTS[name], net, opt, x, y, 3, device)
    times = {name: [] for name in runs}
    for _ in range(args.rounds):
        for name, (_, net, opt) in runs.items():
            times[name].append(steps(VARIANTS[name], net, opt, x, y, args.steps, device))
    flops = train_flops(args.width, args.batch, device) if args.peak_tflops else None
    table = Table(title=f"CIFAR ResNet-18 width {args.width}, batch {args.batch}, {device} "
                        f"({torch.get_num_threads()} threads), median of {args.rounds} x {args.steps} steps")
    for col in ("variant", "images/s", "ratio to fp32") + (("% of peak",) if flops else ()):
        table.add_column(col, justify="left" if col == "variant" else "right")
    base = args.batch * args.steps / statistics.median(times["fp32"])
    for name, t in times.items():
        rate = args.batch * args.steps / statistics.median(t)
        extra = (f"{100 * rate / args.batch * flops / (args.peak_tflops * 1e12):.1f}",) if flops else ()
        table.add_row(name, f"{rate:.0f}", f"{rate / base:.2f}", *extra)
    Console(width=120).print(table)


if __name__ == "__main__":
    main()
