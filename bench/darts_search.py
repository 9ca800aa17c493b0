"""DARTS search step: seconds per step and memory, first order vs second order vs partial channels,
and eager vs compiled (``search.compile=true``).

    python bench/darts_search.py                       # CPU or GPU, whichever torch picks
    python bench/darts_search.py --device cpu --layers 5 --channels 16 --size 16 --batch 32
    python bench/darts_search.py --compile --device cpu --layers 3 --nodes 2 --channels 8 --size 8 --batch 16
    python bench/darts_search.py --compile --layers 8 --channels 16 --size 32 --batch 64   # on a GPU

One step = an alpha step on an architecture batch plus the weight step (SGD), as in
``nas-cli search-darts`` (its ``BilevelStep``); "second+reuse" is second order with ``arch.reuse_train_grad=true``.
The configurations' steps alternate, so drifts in machine load hit them alike. Memory: on a GPU,
``torch.cuda.max_memory_allocated`` over the step;
on a CPU, the activation memory of one training forward (the bytes of every tensor autograd saves,
counted by saved-tensor hooks). Goals: second order <= 2.5x first-order time; PC (K=4) <= 0.4x
first-order activation memory; compiled no slower than eager (CPU), and faster where eager is launch-bound (GPU).

``--compile`` times each configuration eager and compiled (``mode`` auto: reduce-overhead, i.e. CUDA graphs,
on CUDA; inductor's default on a CPU); compilation happens in the warm-up steps and is reported apart.
``step_timings`` is the function a GPU benchmark imports (see its docstring).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from nas_cli.data.resumable import BatchStream
from nas_cli.nas.darts.architect import Architect
from nas_cli.nas.darts.search import BilevelStep, StepOptions, compile_supernet
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


def setup(args, order: str, partial: int, reuse: bool = False, compiled: bool = False):
    """A supernet and one search step on it (the alpha step, then the weight step), on fixed batches."""
    torch.manual_seed(0)
    device = torch.device(args.device)
    shape = (args.in_channels, args.size, args.size)
    model = SearchNetwork(shape, 10, args.channels, args.layers, args.nodes, partial_channels=partial).to(device)
    opt = torch.optim.SGD(model.parameters(), lr=0.025, momentum=0.9, weight_decay=3e-4)
    # the default unrolled step (arch.unrolled=code) reads the weight SGD's momentum buffers
    arch = Architect(model, order, reuse_train_grad=reuse, weight_optimizer=opt)

    def batch():
        return torch.randn(args.batch, *shape, device=device), torch.randint(0, 10, (args.batch,), device=device)

    graphs = False
    if compiled:
        opts = StepOptions(
            compile=True, mode=getattr(args, "mode", "auto"), backend=getattr(args, "backend", "inductor")
        )
        graphs = compile_supernet(model, opts, device)
    arch_batches = [batch() for _ in range(4)]  # on the device already: the step alone is timed
    step_fn = BilevelStep(model, arch, BatchStream(arch_batches, None), opt, device, cuda_graphs=graphs)
    train_batches = [batch() for _ in range(4)]
    count = [0]

    def step():
        xt, yt = train_batches[count[0] % len(train_batches)]
        count[0] += 1
        loss, _ = step_fn(model, xt, yt)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
        opt.step()

    return model, step, batch


def measure(args, configs: dict) -> dict:
    """Seconds per step (median, the configs' steps interleaved so load drifts hit all alike) and memory.
    ``warmup_s``: the warm-up steps' time (for a compiled configuration, mostly compilation)."""
    device = torch.device(args.device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    built = {name: setup(args, *config) for name, config in configs.items()}
    times: dict[str, list[float]] = {name: [] for name in built}
    warm: dict[str, float] = dict.fromkeys(built, 0.0)
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
            else:
                warm[name] += time.perf_counter() - t0
            if device.type == "cuda":
                peaks[name] = max(peaks.get(name, 0.0), torch.cuda.max_memory_allocated() / 2**20)
    out = {}
    for name, (model, _, batch) in built.items():
        out[name] = {"s_per_step": statistics.median(times[name]), "warmup_s": warm[name]}
        if not getattr(args, "no_activations", False):
            out[name]["activation_MiB"] = activation_bytes(model, *batch()) / 2**20
        if name in peaks:
            out[name]["peak_MiB"] = peaks[name]
    return out


def step_timings(
    order: str = "first",
    partial: int = 1,
    batch: int = 64,
    compiled: bool = False,
    *,
    device: str = "cuda",
    layers: int = 8,
    nodes: int = 4,
    channels: int = 16,
    size: int = 32,
    in_channels: int = 3,
    steps: int = 10,
    warmup: int = 3,
    mode: str = "auto",
    backend: str = "inductor",
    reuse: bool = False,
) -> dict:
    """One configuration's DARTS search step: ``{"s_per_step", "warmup_s", "peak_MiB" (CUDA)}``.

    For a GPU benchmark (e.g. ``bench/gpu.py``): ``from darts_search import step_timings`` with ``bench/`` on
    ``sys.path``. ``compiled``: ``search.compile=true`` (``mode`` auto = reduce-overhead on CUDA); the
    ``warmup`` steps absorb compilation (3 cover the alpha-step and weight-step graphs). Defaults: DARTS's
    CIFAR-10 search supernet (8 cells, C16, 32x32); ``partial=4`` is PC-DARTS's K.
    """
    args = argparse.Namespace(
        device=device,
        layers=layers,
        nodes=nodes,
        channels=channels,
        size=size,
        in_channels=in_channels,
        batch=batch,
        steps=steps,
        warmup=warmup,
        mode=mode,
        backend=backend,
        no_activations=True,
    )
    if compiled:
        torch._dynamo.reset()
    return measure(args, {"run": (order, partial, reuse, compiled)})["run"]


def compare_compiled(args) -> None:
    """Eager vs compiled ms/step for first order, second order and PC-DARTS (K=4 where channels allow)."""
    configs = {"first": ("first", 1), "second": ("second", 1)}
    if args.channels % 4 == 0:
        configs["pc4"] = ("first", 4)
    runs = {}
    for name, config in configs.items():
        torch._dynamo.reset()
        args.no_activations = True
        runs.update(
            measure(args, {f"{name} eager": (*config, False, False), f"{name} compiled": (*config, False, True)})
        )
    print(
        f"device {args.device}, {args.layers} cells x {args.nodes} nodes, C={args.channels}, "
        f"{args.in_channels}x{args.size}x{args.size}, batch {args.batch}, threads {torch.get_num_threads()}"
    )
    for name in configs:
        e, c = runs[f"{name} eager"], runs[f"{name} compiled"]
        peak = f"   peak {e['peak_MiB']:.0f} / {c['peak_MiB']:.0f} MiB" if "peak_MiB" in e else ""
        print(
            f"  {name:7s} eager {e['s_per_step'] * 1e3:8.1f} ms/step   compiled {c['s_per_step'] * 1e3:8.1f} "
            f"ms/step ({e['s_per_step'] / c['s_per_step']:.2f}x faster; compiling took "
            f"{c['warmup_s']:.0f} s){peak}"
        )


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
    parser.add_argument("--compile", action="store_true", help="eager vs compiled (search.compile=true) instead")
    parser.add_argument("--mode", default="auto", help="search.mode when compiling")
    parser.add_argument("--backend", default="inductor", help="search.backend when compiling")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.compile:
        compare_compiled(args)
        return
    runs = measure(
        args, {"first": ("first", 1), "second": ("second", 1), "second+reuse": ("second", 1, True), "pc4": ("first", 4)}
    )
    print(
        f"device {args.device}, {args.layers} cells x {args.nodes} nodes, C={args.channels}, "
        f"{args.in_channels}x{args.size}x{args.size}, batch {args.batch}"
    )
    for name, r in runs.items():
        print(
            f"  {name:12s} {r['s_per_step'] * 1e3:9.1f} ms/step   activations {r['activation_MiB']:8.2f} MiB"
            + (f"   peak {r['peak_MiB']:8.1f} MiB" if "peak_MiB" in r else "")
        )
    f, s, p = runs["first"], runs["second"], runs["pc4"]
    print(
        f"second/first time {s['s_per_step'] / f['s_per_step']:.2f}x as DARTS (weight gradient recomputed); "
        f"{runs['second+reuse']['s_per_step'] / f['s_per_step']:.2f}x with arch.reuse_train_grad=true "
        f"(goal <= 2.5x)"
    )
    print(f"pc4/first activation memory {p['activation_MiB'] / f['activation_MiB']:.2f}x (goal <= 0.4x)")
    if "peak_MiB" in f:
        print(
            f"pc4/first peak memory {p['peak_MiB'] / f['peak_MiB']:.2f}x; second/first peak "
            f"{s['peak_MiB'] / f['peak_MiB']:.2f}x"
        )


if __name__ == "__main__":
    main()
