"""Training throughput of the engine's speed options on one model and batch, as ratios to fp32.

fp32, bf16 autocast, channels_last, and torch.compile, each timed over the same
training steps in one process (rounds alternate so machine noise hits all alike).
On a GPU it also prints each as a fraction of the GPU's peak bf16 FLOP/s (pass
--peak-tflops; the model's FLOPs are counted with torch.utils.flop_counter).

    python bench/train_throughput.py [--width 16] [--batch 64] [--steps 10] [--rounds 3]

``--resident`` instead times training on data held on the device (``data.on_device``): the
engine with and without flip + crop augmentation, and a bare loop over the same device-resident
data, in fp32 and bf16 + channels_last (``resident_table``; ``bench/gpu.py`` can import it).

    python bench/train_throughput.py --resident [--width 64] [--batch 512] [--images 50000] [--device cuda]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F
from rich.console import Console
from rich.table import Table

from nas_cli.engine.device import autocast
from nas_cli.models.resnet import resnet18
from nas_cli.runs.options import resolve_device

FLIP_CROP = {"hflip": True, "crop_padding": 4}  # the standard CIFAR recipe
CIFAR_MEAN, CIFAR_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)

VARIANTS = {
    "fp32": {},
    "bf16": {"precision": "bf16"},
    "channels_last": {"channels_last": True},
    "compile": {"compile": True},
}


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


def cifar_like(n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` random CIFAR-shaped uint8 images and labels (speed does not depend on the pixels)."""
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 3, 32, 32), generator=g, dtype=torch.uint8), torch.randint(
        0, 10, (n,), generator=g
    )


def resident_engine_throughput(
    device: str | torch.device = "cuda",
    *,
    batch: int = 512,
    width: int = 64,
    precision: str = "fp32",
    channels_last: bool = False,
    augment: dict | None = None,
    images: int = 50_000,
    epochs: int = 2,
) -> float:
    """Training images/s of ``Trainer.fit`` on a CIFAR ResNet-18 with the data on ``device``
    (``data.on_device=true``): the last epoch's ``samples_per_s`` (the first one warms cuDNN up)."""
    import tempfile

    from nas_cli.data.augment import build_augment
    from nas_cli.data.bundle import tensor_bundle
    from nas_cli.engine.trainer import Trainer
    from nas_cli.runs.lifecycle import Run

    device = resolve_device(str(device))
    x, y = cifar_like(images)
    n_val = max(batch, images // 50)
    data = tensor_bundle(
        "cifar-like",
        x,
        y,
        torch.arange(n_val, images),
        torch.arange(n_val),
        10,
        batch_size=batch,
        seed=0,
        mean=CIFAR_MEAN,
        std=CIFAR_STD,
        on_device=True,
        augment=build_augment(augment, (3, 32, 32), CIFAR_MEAN),
    )
    torch.manual_seed(0)
    model = resnet18((3, 32, 32), 10, width=width)
    trainer = Trainer(
        epochs=epochs, precision=precision, channels_last=channels_last, checkpoint=False, device=device, progress=False
    )
    with tempfile.TemporaryDirectory() as run_dir:
        run = Run(run_dir, "train", seed=0, device=device)
        trainer.fit(
            model,
            torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9),
            data.train,
            data.val,
            run=run,
            generator=data.generator,
        )
        assert data.train.device is not None, "the engine did not place the data"
        return float(run.record.rows[-1]["samples_per_s"])


def resident_bare_throughput(
    device: str | torch.device = "cuda",
    *,
    batch: int = 512,
    width: int = 64,
    precision: str = "fp32",
    channels_last: bool = False,
    images: int = 50_000,
    epochs: int = 2,
) -> float:
    """Training images/s of a hand-written loop over the same device-resident uint8 data (a permutation
    gather, scaling and normalization per batch, no augmentation): the last epoch's."""
    device = resolve_device(str(device))
    x, y = (t.to(device) for t in cifar_like(images))
    mean = torch.tensor(CIFAR_MEAN, device=device).view(1, 3, 1, 1)
    std = torch.tensor(CIFAR_STD, device=device).view(1, 3, 1, 1)
    torch.manual_seed(0)
    model = resnet18((3, 32, 32), 10, width=width).to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    rate = 0.0
    for _ in range(epochs):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        order = torch.randperm(images, device=device)
        for i in range(0, images, batch):
            idx = order[i : i + batch]
            xb = (x[idx].float().div_(255) - mean) / std
            if channels_last:
                xb = xb.contiguous(memory_format=torch.channels_last)
            with autocast(device, precision):
                loss = F.cross_entropy(model(xb), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        rate = images / (time.perf_counter() - start)
    return rate


def resident_table(
    device: str | torch.device = "cuda", *, batch: int = 512, width: int = 64, images: int = 50_000, epochs: int = 2
) -> dict[str, float]:
    """Images/s for fp32 and bf16 + channels_last: ``<p>/bare``, ``<p>/engine``, ``<p>/engine_flip_crop``,
    and the two ratios the goals are about: ``<p>/engine_over_bare`` (>= 0.97) and
    ``<p>/flip_crop_over_plain`` (>= 0.95)."""
    out: dict[str, float] = {}
    common = {"batch": batch, "width": width, "images": images, "epochs": epochs}
    for name, precision, channels_last in (("fp32", "fp32", False), ("bf16_cl", "bf16", True)):
        speed = {"precision": precision, "channels_last": channels_last, **common}
        out[f"{name}/bare"] = resident_bare_throughput(device, **speed)
        out[f"{name}/engine"] = resident_engine_throughput(device, **speed)
        out[f"{name}/engine_flip_crop"] = resident_engine_throughput(device, augment=FLIP_CROP, **speed)
        out[f"{name}/engine_over_bare"] = out[f"{name}/engine"] / out[f"{name}/bare"]
        out[f"{name}/flip_crop_over_plain"] = out[f"{name}/engine_flip_crop"] / out[f"{name}/engine"]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--width", type=int, default=16)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--peak-tflops", type=float, default=None, help="the GPU's peak (e.g. 990 for H100 bf16)")
    parser.add_argument("--resident", action="store_true", help="time device-resident data (see above)")
    parser.add_argument("--images", type=int, default=50_000, help="--resident: images in the training set")
    args = parser.parse_args()
    device = resolve_device(args.device)
    if args.resident:
        table = resident_table(device, batch=args.batch, width=args.width, images=args.images)
        for key, value in table.items():
            print(f"{key:28s} {value:10.3f}" if "over" in key else f"{key:28s} {value:10.0f} img/s")
        return
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
    table = Table(
        title=f"CIFAR ResNet-18 width {args.width}, batch {args.batch}, {device} "
        f"({torch.get_num_threads()} threads), median of {args.rounds} x {args.steps} steps"
    )
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
