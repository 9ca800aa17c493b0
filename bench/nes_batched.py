"""NES gradient estimate, batched vs a per-sample Python loop, in one process.

    .venv/bin/python bench/nes_batched.py                       # M=50000, num_dim=64, CPU-sized input batch
    .venv/bin/python bench/nes_batched.py --batch-size 160000 --device cuda

The batched estimate is ``nas_cli.gradients.estimators.nes_gradient`` (population chunks through
``batched_losses``). The loop draws each perturbation, evaluates that one network with
``problem.loss`` and accumulates ``f_i eps_i`` (antithetic pairs, as the batched default). The loop runs
``--loop-samples`` members (all M when 0) and its time is scaled to M, said so in the output. Both
estimates use the same noise when the loop runs all M, and are compared. Peak memory: the growth of
ru_maxrss (the loop runs first, so the batched phase's growth is its own) and, on CUDA,
torch.cuda.max_memory_allocated per phase. Last, ``nes_natural``'s batched estimate
(``natural_nes.estimate``: the same population and noise, plus the sigma gradient and both Fisher values)
is timed against the batched NES, and its mean direction compared with NES's. And ``reinforce``
(``reinforce.reinforce_gradient``, ``--reinforce-population`` draws of the stochastic units per input: each
draw a forward pass over the whole batch, like one NES member) is timed at the populations grad-bench uses.
"""

from __future__ import annotations

import argparse
import resource
import time

import torch

from nas_cli.commands.grad_bench import shipped_settings
from nas_cli.gradients import estimators as est
from nas_cli.gradients import natural_nes, problem, reinforce


def maxrss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def loop_nes(theta, x, y, sigma, pairs, seed, pop_chunk):
    """The per-sample reference: one network per member, in a Python loop (antithetic pairs)."""
    grad = torch.zeros_like(theta, dtype=torch.float64)
    done = 0
    for c, s in enumerate(range(0, pairs, pop_chunk)):
        eps_chunk = est.noise_chunk(c, min(pop_chunk, pairs - s), theta.numel(), seed, theta.device, theta.dtype)
        for eps in eps_chunk:
            if done == pairs:
                return grad, done
            f_plus = problem.loss(theta + sigma * eps, x, y)
            f_minus = problem.loss(theta - sigma * eps, x, y)
            grad += (f_plus - f_minus).double() * eps.double()
            done += 1
    return grad, done


def main():
    shipped = shipped_settings()  # grad-bench's defaults, from conf/grad_bench.yaml
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--population", type=int, default=50000)
    p.add_argument("--num-dim", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=256, help="shared inputs per evaluation (the study: 160000)")
    p.add_argument("--sigma", type=float, default=shipped.nes.sigma)
    p.add_argument("--chunk-elements", type=int, default=shipped.chunk_elements)
    p.add_argument("--loop-samples", type=int, default=2000, help="members the loop times (0: all)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument(
        "--reinforce-population",
        type=int,
        nargs="*",
        default=shipped.reinforce.population,
        help="REINFORCE draws per input to time (default: grad-bench's reinforce.population)",
    )
    a = p.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    device = torch.device(a.device)
    d, pairs = a.num_dim, a.population // 2
    g = torch.Generator(device=device).manual_seed(0)
    theta = problem.random_weights(d, 1.0, g, device)
    x = torch.randn(a.batch_size, d, generator=g, device=device)
    y = problem.forward(problem.random_weights(d, 1.0, g, device), x)
    pop_chunk = max(1, a.chunk_elements // theta.numel())

    def f(rows):
        return problem.batched_losses(rows, x, y, a.chunk_elements)

    # warm-up (allocator, kernels)
    est.nes_gradient(f, theta, a.sigma, 200, seed=1, pop_chunk=pop_chunk)
    loop_nes(theta, x, y, a.sigma, 20, 1, pop_chunk)

    loop_pairs = pairs if a.loop_samples <= 0 else min(pairs, max(1, a.loop_samples // 2))
    rss0 = maxrss_mib()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    sync(device)
    t0 = time.perf_counter()
    loop_grad, done = loop_nes(theta, x, y, a.sigma, loop_pairs, 7, pop_chunk)
    sync(device)
    loop_s = time.perf_counter() - t0
    loop_rss = maxrss_mib() - rss0
    loop_cuda = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None
    loop_full_s = loop_s * pairs / done

    rss1 = maxrss_mib()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    sync(device)
    t0 = time.perf_counter()
    batched = est.nes_gradient(f, theta, a.sigma, 2 * pairs, antithetic=True, seed=7, pop_chunk=pop_chunk)
    sync(device)
    batched_s = time.perf_counter() - t0
    batched_rss = maxrss_mib() - rss1
    batched_cuda = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None

    print(
        f"NES gradient, M={2 * pairs} (antithetic), num_dim={d} ({theta.numel()} weights), "
        f"{a.batch_size} shared inputs, device={device}, threads={torch.get_num_threads()}"
    )
    scaled = "" if done == pairs else f" (timed {2 * done} members: {loop_s:.2f} s, scaled to M)"
    print(f"  per-sample loop : {loop_full_s:9.2f} s{scaled}")
    print(
        f"  batched         : {batched_s:9.2f} s  (population chunks of {pop_chunk}, "
        f"activations <= {a.chunk_elements} numbers)"
    )
    print(f"  speed-up        : {loop_full_s / batched_s:9.1f}x")
    print(
        f"  peak memory     : ru_maxrss growth loop {loop_rss:.0f} MiB, batched {batched_rss:.0f} MiB"
        + (f"; CUDA max allocated loop {loop_cuda:.0f} MiB, batched {batched_cuda:.0f} MiB" if loop_cuda else "")
    )
    if done == pairs:
        same = est.cosine(loop_grad / (2 * pairs * a.sigma), batched)
        print(f"  cosine(loop, batched) = {same:.6f} (same noise)")

    sync(device)
    t0 = time.perf_counter()
    natural = natural_nes.estimate(
        f, theta, torch.full_like(theta, a.sigma), 2 * pairs, antithetic=True, seed=7, pop_chunk=pop_chunk
    )
    sync(device)
    natural_s = time.perf_counter() - t0
    print(
        f"  nes_natural     : {natural_s:9.2f} s  ({natural_s / batched_s:.2f}x the batched NES: + the sigma "
        f"gradient and the two Fisher estimates; cosine of its mean step to NES's = "
        f"{est.cosine(-natural.natural_mu, batched):.6f}, same noise)"
    )
    for m in a.reinforce_population:
        sync(device)
        t0 = time.perf_counter()
        rf = reinforce.reinforce_gradient(theta, x, y, m, seed=7, chunk_elements=a.chunk_elements)
        sync(device)
        rf_s = time.perf_counter() - t0
        print(
            f"  reinforce M={m:<5}: {rf_s:9.2f} s  ({rf_s / batched_s * 2 * pairs / m:.2f}x NES's time per member; "
            f"cosine to NES = {est.cosine(rf, batched):.4f}: the stochastic network's gradient, not the smoothed one)"
        )


if __name__ == "__main__":
    main()
