"""Engine overhead: nas-cli's Trainer against a bare hand-written PyTorch loop.

Same model (the default SmallCNN), data (mnist5k), batch size, optimizer and
per-epoch evaluation, in one process, alternating rounds so machine noise hits
both alike. The engine does everything it does in a real run: progress bar
(drawn to a null terminal), metrics.csv and summary.json, a checkpoint every
epoch, a safe point after every batch. Prints samples/s of each and their ratio (engine / bare;
1.0 = free). On a GPU both copy each batch to it, as the engine does with in-memory data.

    python bench/train_overhead.py [--epochs 3] [--rounds 3] [--batch-size 64] [--device cuda]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time

import rich
import torch
import torch.nn.functional as F
from rich.console import Console

from nas_cli.data.embedded import mnist5k
from nas_cli.engine.device import seed_everything
from nas_cli.engine.trainer import Trainer
from nas_cli.models.cnn import SmallCNN
from nas_cli.runs.lifecycle import Run
from nas_cli.runs.options import resolve_device


def bare_loop(data, epochs: int, lr: float, device: torch.device) -> float:
    """The loop a researcher would write by hand; returns seconds."""
    model = SmallCNN(data.in_shape, data.num_classes).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    start = time.perf_counter()
    for _ in range(epochs):
        model.train()
        for x, y in data.train:
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            loss = F.cross_entropy(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        model.eval()
        with torch.inference_mode():
            correct = sum((model(x.to(device)).argmax(1) == y.to(device)).sum().item() for x, y in data.val)
    assert correct >= 0
    return time.perf_counter() - start


def engine(data, epochs: int, lr: float, device: torch.device) -> float:
    model = SmallCNN(data.in_shape, data.num_classes)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    with tempfile.TemporaryDirectory() as run_dir:
        trainer = Trainer(epochs=epochs, device=device, progress=True)
        start = time.perf_counter()  # the whole lifecycle: record, checkpoints, a safe point every batch
        trainer.fit(
            model, opt, data.train, data.val, generator=data.generator, run=Run(run_dir, "train", seed=0, device=device)
        )
        return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--device", default="cpu", help="cpu | cuda | auto")
    args = parser.parse_args()
    device = resolve_device(args.device)

    out = Console()  # our own: the global console goes to a null terminal below
    # draw the engine's bar and tables for real, into a terminal nobody watches
    rich.reconfigure(force_terminal=True, file=open(os.devnull, "w"))  # noqa: SIM115
    seed_everything(0)
    data = mnist5k(batch_size=args.batch_size)
    samples = args.epochs * len(data.train.x)
    engine(data, 1, 3e-3, device)  # warm-up: first-touch allocations, thread pools, CUDA context
    times = {"bare": [], "engine": []}
    for _ in range(args.rounds):
        times["bare"].append(bare_loop(data, args.epochs, 3e-3, device))
        times["engine"].append(engine(data, args.epochs, 3e-3, device))
    bare, eng = (samples / statistics.median(times[k]) for k in ("bare", "engine"))
    out.print(
        f"SmallCNN on mnist5k, batch {args.batch_size}, {args.epochs} epochs x {args.rounds} rounds, "
        f"{torch.get_num_threads()} threads, {torch.cuda.get_device_name(device) if device.type == 'cuda' else 'cpu'}"
        f" (median round)"
    )
    out.print(f"  bare loop : {bare:8.0f} samples/s")
    out.print(f"  engine    : {eng:8.0f} samples/s")
    out.print(f"  ratio     : {eng / bare:8.3f}  (engine / bare, goal >= 0.97)")


if __name__ == "__main__":
    main()
