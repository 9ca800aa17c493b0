"""DARTS search step: seconds per step and memory, first order vs second order vs partial channels.

    python bench/darts_search.py                       # CPU or GPU, whichever torch picks
    python bench/darts_search.py --device cpu --layers 5 --channels 16 --size 16 --batch 32

One step = an alpha step on an architecture batch plus the weight step (SGD), as in
``nas-cli search-darts``; "second+reuse" is second order with ``arch.reuse_train_grad=true``.
The four configurations' steps alternate, so drifts in machine load hit them alike. Memory: on a GPU, ``torch.cuda.max_memory_allocated`` over the step;
on a CPU, the activation memory of one training forward (the bytes of every tensor autograd saves,
counted by saved-tensor hooks). Goals: second order <= 2.5x first-order time; PC (K=4) <= 0.4x
first-order activation memory.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from nas_cli.nas.darts.architect import Architect
from nas_cli.nas.darts.supernet import SearchNetwork


def activation_bytes(model, x, y) -> int:
    seen: dict[int, int] = {}

    def pack(t):
        if t.untyped_storage().data_ptr() not in seen:
            seen[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = F.cross_entropy(model(x), y)
    params = {p.untyped_storage().data_ptr() for p in [*model.parameters(), *model.arch.parameters()]}
    del loss
    return sum(v for k, v in seen.items() if k not in params)


def setup(args, order: str, partial: int, reuse: bool = False):
    """A supernet and one search step on it (the alpha step, then the weight step)."""
    torch.manual_seed(0)
    device = torch.device(args.device)
    shape = (args.in_channels, args.size, args.size)
    model = SearchNetwork(shape, 10, args.channels, args.layers, args.nodes, partial_channels=partial).to(device)
    opt = torch.optim.SGD(model.parameters(), lr=0.025, momentum=0.9, weight_decay=3e-4)
    # the default unrolled step (arch.unrolled=code) reads the weight SGD's momentum buffers
    arch = Architect(model, order, reuse_train_grad=reuse, weight_optimizer=opt)

    def batch():
        return torch.randn(args.batch, *shape, device=device), torch.randint(0, 10, (args.batch,), device=device)

    def step():
        (xt, yt), (xv, yv) = batch(), batch()
        arch.step(xt, yt, xv, yv, xi=0.025)
        opt.zero_grad(set_to_none=True)
        if arch.unrolled_train is not None:
            loss = arch.weight_loss_from_unrolled()[0]
        else:
            model.detach_arch = True
            loss = F.cross_entropy(model(xt), yt)
            model.detach_arch = False
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
        opt.step()

    return model, step, batch


def measure(args, configs: dict) -> dict:
    """Seconds per step (median, the configs' steps interleaved so load drifts hit all alike) and memory."""
    device = torch.device(args.device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    built = {name: setup(args, *config) for name, config in configs.items()}
    times: dict[str, list[float]] = {name: [] for name in built}
    peaks: dict[str, float] = {}
    for i in range(args.warmup + args.steps):
        for name, (_, step, _) in built.items():
            if device.type == "cuda":
                sync()
                torch.cuda.reset_peak_memory_stats()
            sync()
            t0 = time.perf_counter()
            step()
            sync()
            if i >= args.warmup:
                times[name].append(time.perf_counter() - t0)
            if device.type == "cuda":
                peaks[name] = max(peaks.get(name, 0.0), torch.cuda.max_memory_allocated() / 2**20)
    out = {}
    for name, (model, _, batch) in built.items():
        out[name] = {"s_per_step": statistics.median(times[name]),
                     "activation_MiB": activation_bytes(model, *batch()) / 2**20}
        if name in peaks:
            out[name]["peak_MiB"] = peaks[name]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--layers", type=int, default=5)
    parser.add_argument("--nodes", type=int, default=4)
    parser.add_argument("--channels", type=int, default=16)
    parser.add_argument("--size", type=int, default=16)
    parser.add_argument("--in-channels", type=int, default=3)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    runs = measure(args, {"first": ("first", 1), "second": ("second", 1), "second+reuse": ("second", 1, True),
                          "pc4": ("first", 4)})
    print(f"device {args.device}, {args.layers} cells x {args.nodes} nodes, C={args.channels}, "
          f"{args.in_channels}x{args.size}x{args.size}, batch {args.batch}")
    for name, r in runs.items():
        print(f"  {name:12s} {r['s_per_step'] * 1e3:9.1f} ms/step   activations {r['activation_MiB']:8.2f} MiB"
              + (f"   peak {r['peak_MiB']:8.1f} MiB" if "peak_MiB" in r else ""))
    f, s, p = runs["first"], runs["second"], runs["pc4"]
    print(f"second/first time {s['s_per_step'] / f['s_per_step']:.2f}x as DARTS (weight gradient recomputed); "
          f"{runs['second+reuse']['s_per_step'] / f['s_per_step']:.2f}x with arch.reuse_train_grad=true "
          f"(goal <= 2.5x)")
    print(f"pc4/first activation memory {p['activation_MiB'] / f['activation_MiB']:.2f}x (goal <= 0.4x)")
    if "peak_MiB" in f:
        print(f"pc4/first peak memory {p['peak_MiB'] / f['peak_MiB']:.2f}x; second/first peak "
              f"{s['peak_MiB'] / f['peak_MiB']:.2f}x")


if __name__ == "__main__":
    main()
