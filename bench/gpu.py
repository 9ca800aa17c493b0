"""Every GPU figure of nas-cli in one process, each beside its reference: `make bench-gpu`.

- train: the engine vs a bare loop over the same GPU-resident data (CIFAR ResNet-18, batch 512, fp32 and
  bf16 + channels_last), and flip + crop augmentation vs none, with the data on the device.
- search-darts: seconds per bilevel step, first and second order and PC-DARTS K=4, at batch 64 and 256,
  eager vs compiled, with peak memory, and the GPU-hours of a 50-epoch CIFAR-10 search that follow.
- XNOR-ResNet-18 width 192: images/s in fp32 and bf16, and the GPU-hours of the width x weight-decay sweep.
- fuse-bn: ResNet-50 eval latency unfused vs fused, and the output difference in full fp32.

Without CUDA it says so in one line and exits 0. Sizes are chosen to finish in under 5 minutes on one H100.

    python bench/gpu.py [--quick] [--only train,darts,xnor,fuse]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch
import torch.nn.functional as F
from rich.console import Console
from rich.table import Table

SECTIONS = ("train", "darts", "xnor", "fuse")
CIFAR_TRAIN = 50_000
SWEEP_RUNS, SWEEP_EPOCHS = 24, 100  # experiment=xnor_width_wd: 3 widths x 8 weight decays, 100 epochs each
SEARCH_EPOCHS, SEARCH_STEPS = 50, 391  # a DARTS CIFAR-10 search: 50 epochs of 25,000 images at batch 64


def cuda_time(fn, repeats: int) -> float:
    """Median seconds of ``fn()`` over ``repeats`` calls, after one warm-up call, with the GPU synchronized."""
    fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def train_rows(quick: bool) -> list[tuple]:
    """CIFAR ResNet-18 width 64, batch 512, data on the GPU: the engine vs a bare loop, and flip + crop vs none."""
    from train_throughput import resident_table

    t = resident_table("cuda", batch=512, width=64, images=10_000 if quick else 50_000, epochs=2)
    rows = []
    for key, label in (("fp32", "fp32"), ("bf16_cl", "bf16 + channels_last")):
        rows.append(
            (
                f"train resnet18 w64 b512 {label}",
                f"{t[key + '/engine']:,.0f} img/s engine",
                f"{t[key + '/bare']:,.0f} img/s bare loop",
                f"{t[key + '/engine_over_bare']:.3f} (goal >= 0.97)",
            )
        )
        rows.append(
            (
                "  + flip + crop on the GPU",
                f"{t[key + '/engine_flip_crop']:,.0f} img/s",
                f"{t[key + '/engine']:,.0f} img/s without",
                f"{t[key + '/flip_crop_over_plain']:.3f} (goal >= 0.95)",
            )
        )
    return rows


def darts_rows(quick: bool) -> list[tuple]:
    """DARTS search steps (8 cells, C16, 32x32): eager vs compiled (search.compile, CUDA graphs), with peak memory
    and the GPU-hours of a 50-epoch CIFAR-10 search (25,000 weight images a epoch) that follow."""
    from darts_search import step_timings

    configs = [("first", 1, 64), ("first", 1, 256), ("second", 1, 64), ("first", 4, 256)]
    steps = 5 if quick else 20
    rows, first64 = [], None
    for order, partial, batch in configs:
        label = f"darts {order} order" + (f" PC K={partial}" if partial > 1 else "") + f" b{batch}"
        eager = step_timings(order, partial, batch, compiled=False, steps=steps)
        fast = step_timings(order, partial, batch, compiled=True, steps=steps)
        if (order, partial, batch) == ("first", 1, 64):
            first64 = fast["s_per_step"]
        hours = fast["s_per_step"] * SEARCH_EPOCHS * -(-25_000 // batch) / 3600
        rows.append(
            (
                label,
                f"{fast['s_per_step']:.3f} s/step compiled ({fast['peak_MiB']:,.0f} MiB)",
                f"{eager['s_per_step']:.3f} s/step eager ({eager['peak_MiB']:,.0f} MiB)",
                f"{eager['s_per_step'] / fast['s_per_step']:.1f}x; 50-epoch search {hours:.2f} GPU-h",
            )
        )
        if order == "second" and first64:
            rows.append(
                ("  second / first order (b64, compiled)", f"{fast['s_per_step'] / first64:.2f}", "goal <= 2.5", "")
            )
        torch.cuda.empty_cache()
    return rows


def xnor_rows(quick: bool) -> list[tuple]:
    """XNOR-ResNet-18 width 192, batch 64: training images/s in fp32 and bf16; the sweep's GPU-hours from them."""
    from nas_cli.engine.device import autocast
    from nas_cli.models.xnor_resnet import xnor_resnet18

    device = torch.device("cuda")
    torch.manual_seed(0)
    model = xnor_resnet18((3, 32, 32), 10, width=192).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    x, y = torch.randn(64, 3, 32, 32, device=device), torch.randint(0, 10, (64,), device=device)
    steps = 5 if quick else 20
    rows = []
    for precision in ("fp32", "bf16"):

        def train(precision=precision):
            for _ in range(steps):
                with autocast(device, precision):
                    loss = F.cross_entropy(model(x), y)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()

        rate = 64 * steps / cuda_time(train, 3)
        hours = SWEEP_RUNS * SWEEP_EPOCHS * CIFAR_TRAIN / rate / 3600
        rows.append(
            (
                f"xnor_resnet18 w192 b64 {precision}",
                f"{rate:,.0f} img/s",
                f"sweep {SWEEP_RUNS}x{SWEEP_EPOCHS} epochs: {hours:.1f} GPU-h",
                "",
            )
        )
    return rows


def fuse_rows(quick: bool) -> list[tuple]:
    """ResNet-50: eval latency unfused vs fused at batch 32, and the fold's output difference in full fp32."""
    import torchvision

    from nas_cli.engine.device import full_precision
    from nas_cli.engine.latency import median_latencies
    from nas_cli.tools.fuse_bn.fold import fuse_bn

    device = torch.device("cuda")
    torch.manual_seed(0)
    model = torchvision.models.resnet50(num_classes=1000)
    g = torch.Generator().manual_seed(0)
    for m in model.modules():  # random statistics, so the fold has something to get wrong
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
    model = model.to(device).eval()
    fused, report = fuse_bn(model)
    x = torch.randn(32, 3, 224, 224, device=device)
    with torch.inference_mode(), full_precision():
        expected, got = model(x), fused(x)
    diff = float((expected - got).abs().max() / expected.abs().max())
    with torch.inference_mode():
        tf32 = float((model(x) - fused(x)).abs().max() / model(x).abs().max())
    times = median_latencies({"unfused": model, "fused": fused}, x, repeats=5 if quick else 20)
    return [
        (
            "fuse-bn resnet50 b32 latency",
            f"{1e3 * times['fused']:.2f} ms fused",
            f"{1e3 * times['unfused']:.2f} ms unfused",
            f"{times['unfused'] / times['fused']:.2f}x",
        ),
        (
            "fuse-bn output difference",
            f"{diff:.2e} (fp32, TF32 off)",
            f"{tf32:.2e} (process default)",
            f"{len(report.fused)} pairs",
        ),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer repeats (a check that everything runs)")
    parser.add_argument("--only", default=",".join(SECTIONS), help=f"comma-separated subset of {','.join(SECTIONS)}")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("bench/gpu.py: no CUDA device here; skipped (run it on a GPU machine: make bench-gpu)")
        return
    sections = {"train": train_rows, "darts": darts_rows, "xnor": xnor_rows, "fuse": fuse_rows}
    table = Table(title=f"nas-cli on {torch.cuda.get_device_name()} (torch {torch.__version__})")
    for col in ("workload", "figure", "reference / derived", "ratio"):
        table.add_column(col, justify="left" if col == "workload" else "right")
    for name in args.only.split(","):
        if name not in sections:
            sys.exit(f"bench/gpu.py: unknown section {name}; choose from {', '.join(SECTIONS)}")
        start = time.perf_counter()
        for row in sections[name](args.quick):
            table.add_row(*row)
        print(f"{name}: {time.perf_counter() - start:.0f} s", flush=True)
        torch.cuda.empty_cache()
    Console(width=160).print(table)


if __name__ == "__main__":
    main()
