"""Gradient estimates of the true (sign-forward) loss.

* STE (``ste_gradient``): autograd through ``binary_sign`` with one of ``STE_VARIANTS`` as the backward.
* NES (``nes_gradient``): the search gradient of a Gaussian around the weights,
  ``g = 1/(M sigma) sum_i f(w + sigma eps_i) eps_i``, an unbiased estimate of the gradient of the
  Gaussian-smoothed loss ``E f(w + sigma eps)``. Options: antithetic pairs ``+-eps`` and rank-based
  fitness shaping (``f`` replaced by centred ranks in [-0.5, 0.5]). Without either, the population's mean
  fitness is subtracted (a baseline: same expectation up to O(1/M), far lower variance).
  The population is evaluated with batched tensor ops (``batched_losses``), chunked; the noise of each
  chunk comes from its own seeded generator, so it is drawn again for the weighted sum instead of kept:
  memory stays bounded at any M.
  ``nes_natural`` (``natural_nes``) also steps sigma, by natural gradients; this one keeps sigma fixed.
* CDG (``cdg_gradient``): for every coordinate j, ``(f(w + delta e_j) - f(w - delta e_j)) / (2 delta)``,
  all coordinates batched the same way. The reference the others are compared with.

``f`` is any function from ``(m, P)`` weight rows to ``(m,)`` losses.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from nas_cli.errors import UserError
from nas_cli.gradients import problem
from nas_cli.models.binary import STE_VARIANTS

BatchedLoss = Callable[[torch.Tensor], torch.Tensor]


def ste_gradient(
    theta: torch.Tensor, x: torch.Tensor, y: torch.Tensor, ste: str, k: float = 2.0, beta: float = 5.0
) -> torch.Tensor:
    """The STE estimate: autograd of the true loss with ``ste``'s surrogate derivative through each sign."""
    if ste not in STE_VARIANTS:
        raise UserError(f"ste={ste} is not one of {', '.join(STE_VARIANTS)}")
    w = theta.detach().clone().requires_grad_(True)
    problem.loss(w, x, y, ste, k, beta).backward()
    assert w.grad is not None  # the loss depends on every weight
    return w.grad.detach()


def centred_ranks(f: torch.Tensor) -> torch.Tensor:
    """Ranks of ``f`` scaled to [-0.5, 0.5] (lowest loss -> -0.5); ties broken by position."""
    ranks = torch.empty_like(f)
    ranks[f.argsort()] = torch.arange(len(f), dtype=f.dtype, device=f.device)
    return ranks / max(len(f) - 1, 1) - 0.5


def noise_chunk(chunk: int, rows: int, dim: int, seed: int, device, dtype) -> torch.Tensor:
    """The standard normal noise of population chunk ``chunk``: its own seeded generator, so it can be drawn
    again instead of kept, and ``nes`` and ``nes_natural`` see the same noise for the same seed."""
    g = torch.Generator(device=device).manual_seed(seed * 100_003 + chunk)
    return torch.randn(rows, dim, generator=g, device=device, dtype=dtype)


def nes_gradient(
    f: BatchedLoss,
    theta: torch.Tensor,
    sigma: float,
    population: int,
    antithetic: bool = True,
    fitness_shaping: bool = False,
    seed: int = 0,
    pop_chunk: int = 1024,
) -> torch.Tensor:
    """NES estimate of grad E[f(theta + sigma eps)], ``eps ~ N(0, I)``, from ``population`` evaluations."""
    if population < (2 if antithetic else 1):
        raise UserError(f"nes.population={population} is too small")
    if sigma <= 0:
        raise UserError(f"nes.sigma={sigma} must be > 0")
    dim, dtype, device = theta.numel(), theta.dtype, theta.device
    base = population // 2 if antithetic else population  # independent noise vectors
    pop_chunk = max(1, pop_chunk)
    starts = list(range(0, base, pop_chunk))
    # pass 1: the fitness of every member
    fit_plus, fit_minus = [], []
    for c, s in enumerate(starts):
        eps = noise_chunk(c, min(pop_chunk, base - s), dim, seed, device, dtype)
        if antithetic:
            both = f(torch.cat([theta + sigma * eps, theta - sigma * eps]))
            fit_plus.append(both[: len(eps)])
            fit_minus.append(both[len(eps) :])
        else:
            fit_plus.append(f(theta + sigma * eps))
    plus = torch.cat(fit_plus)
    if antithetic:
        minus = torch.cat(fit_minus)
        if fitness_shaping:
            u = centred_ranks(torch.cat([plus, minus]))
            plus, minus = u[:base], u[base:]
        weights = plus - minus  # sum over the pair: u(+eps) eps + u(-eps) (-eps)
        members = 2 * base
    else:
        weights = centred_ranks(plus) if fitness_shaping else plus - plus.mean()
        members = base
    # pass 2: the same noise again, weighted
    grad = torch.zeros(dim, dtype=torch.float64, device=device)
    for c, s in enumerate(starts):
        eps = noise_chunk(c, min(pop_chunk, base - s), dim, seed, device, dtype)
        grad += weights[s : s + len(eps)].to(torch.float64) @ eps.to(torch.float64)
    return (grad / (members * sigma)).to(dtype)


def cdg_gradient(f: BatchedLoss, theta: torch.Tensor, delta: float, coord_chunk: int = 1024) -> torch.Tensor:
    """Coordinate discrete gradient: a central difference of ``f`` with step ``delta`` per coordinate."""
    if delta <= 0:
        raise UserError(f"cdg.delta={delta} must be > 0")
    dim = theta.numel()
    grad = torch.empty(dim, dtype=torch.float64, device=theta.device)
    coord_chunk = max(1, coord_chunk)
    for s in range(0, dim, coord_chunk):
        idx = torch.arange(s, min(s + coord_chunk, dim), device=theta.device)
        step = torch.zeros(len(idx), dim, dtype=theta.dtype, device=theta.device)
        step[torch.arange(len(idx)), idx] = delta
        both = f(torch.cat([theta + step, theta - step]))
        grad[s : s + len(idx)] = (both[: len(idx)].to(torch.float64) - both[len(idx) :].to(torch.float64)) / (2 * delta)
    return grad.to(theta.dtype)


def cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double().flatten(), b.double().flatten()
    na, nb = a.norm(), b.norm()
    if na == 0 or nb == 0:
        return float("nan")
    return float(a @ b / (na * nb))
