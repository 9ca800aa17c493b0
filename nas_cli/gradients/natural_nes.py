"""Separable NES with natural-gradient steps of the mean *and* the spread (``nes_natural`` in grad-bench).

The search distribution is a Gaussian per weight, ``z_j ~ N(mu_j, sigma_j^2)``, written ``z = mu + sigma eps``
with ``eps ~ N(0, 1)``. With the fitness ``F(z) = -loss(z)`` (NES maximises) and ``J = E[F(z)]``, the
log-derivatives of the density give the search gradients (Wierstra et al. 2014, JMLR, separable NES)::

    d log p / d mu    = (z - mu) / sigma^2                 = eps / sigma
    d log p / d sigma = ((z - mu)^2 - sigma^2) / sigma^3   = (eps^2 - 1) / sigma
    grad_mu J    ~ 1/M sum_i F_i eps_i / sigma
    grad_sigma J ~ 1/M sum_i F_i (eps_i^2 - 1) / sigma

The Fisher information of the diagonal Gaussian in ``(mu, sigma)`` is ``diag(1/sigma^2, 2/sigma^2)``; by
default it is estimated from the same samples, per weight and separately for ``mu`` and ``sigma``::

    F_mu    ~ 1/M sum_i (eps_i / sigma)^2                  -> 1 / sigma^2
    F_sigma ~ 1/M sum_i ((eps_i^2 - 1) / sigma)^2          -> 2 / sigma^2

(``fisher="exact"`` uses the closed forms instead), and the natural gradients ``F^-1 grad`` step both::

    mu    <- mu    + eta_mu    grad_mu J / F_mu
    sigma <- sigma + eta_sigma grad_sigma J / F_sigma      ("additive": the plain natural-gradient step)
    sigma <- sigma * exp(eta_sigma grad_sigma J / (F_sigma sigma))   ("multiplicative": SNES's form, equal to
                                                            first order, cannot step sigma below 0)

sigma is floored at ``sigma_min`` either way (an additive step can overshoot below 0).

Fitness options: ``"raw"`` (the default, ``F = -loss``: the plain log-derivative estimator), ``"baseline"``
subtracts the population's mean fitness, ``"ranks"`` replaces it by centred ranks in [-0.5, 0.5] (the rank
shaping of Salimans et al. 2017, *not* the NES paper's), ``"utilities"`` by SNES's utilities (Wierstra et al.
2014, fitness shaping): the member of rank k among lambda (k = 1 the best, lowest loss) gets

    u_k = max(0, log(lambda/2 + 1) - log k) / sum_j max(0, log(lambda/2 + 1) - log j) - 1/lambda

(``snes_utilities``), which sum to 0. The paper's estimate is ``sum_k u_k grad log p(z_k)``: the utilities take
the place of ``F_k / lambda``, so the fitness used here is ``lambda u_k`` and the ``1/M`` average above gives the
paper's sum. ``antithetic`` (on by default, as for ``nes``) draws the noise in pairs ``+-eps``.

Which combination is which:

* the defaults (``fitness="raw"``, ``fisher="empirical"``, ``sigma_update="additive"``): the plain natural step
  with an empirical Fisher: raw fitness, the Fisher estimated from the same samples, an additive step of sigma.
  A variant of separable NES, not the paper's algorithm.
* Wierstra et al. 2014's SNES (their Algorithm for separable NES): ``fitness="utilities"``, ``fisher="exact"``,
  ``sigma_update="multiplicative"`` (and ``antithetic=False``: SNES draws every member independently). With
  ``s_k`` the noise of rank k, its step is ``mu <- mu + eta_mu sigma sum_k u_k s_k`` and
  ``sigma <- sigma exp(eta_sigma / 2 sum_k u_k (s_k^2 - 1))``, exactly what ``update`` computes from this
  module's estimate (``eta_mu`` 1 and ``eta_sigma = snes_lr_sigma(n)`` are the paper's defaults).

The final weights are the mean ``mu`` or one sample ``mu + sigma eps*``; either is then run
through the quantized network (grad-bench's hard-sign forward), see ``final_weights``.

The population is evaluated in chunks like ``estimators.nes_gradient``, with the very same noise for a given
seed (``estimators.noise_chunk``), so ``nes`` and ``nes_natural`` compare on common random numbers.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from nas_cli.errors import UserError
from nas_cli.gradients.estimators import centred_ranks, noise_chunk

BatchedLoss = Callable[[torch.Tensor], torch.Tensor]
FITNESS = ("raw", "baseline", "ranks", "utilities")
FISHER = ("empirical", "exact")
SIGMA_UPDATES = ("additive", "multiplicative")
QUANTIZE_FROM = ("mean", "sample")


@dataclass
class NaturalGradient:
    """Per-weight search gradients of ``J = E[F]`` and Fisher values, for ``mu`` and for ``sigma`` (float64)."""

    grad_mu: torch.Tensor
    grad_sigma: torch.Tensor
    fisher_mu: torch.Tensor
    fisher_sigma: torch.Tensor

    @property
    def natural_mu(self) -> torch.Tensor:
        return self.grad_mu / self.fisher_mu

    @property
    def natural_sigma(self) -> torch.Tensor:
        return self.grad_sigma / self.fisher_sigma


def snes_lr_sigma(num_weights: int) -> float:
    """SNES's default step size for sigma, ``(3 + ln n) / (5 sqrt n)`` (Wierstra et al. 2014, Table 1)."""
    return (3 + math.log(num_weights)) / (5 * math.sqrt(num_weights))


def check_options(fitness: str, fisher: str, sigma_update: str = "additive") -> None:
    for key, value, choices in (
        ("fitness", fitness, FITNESS),
        ("fisher", fisher, FISHER),
        ("sigma_update", sigma_update, SIGMA_UPDATES),
    ):
        if value not in choices:
            raise UserError(f"nes_natural.{key}={value} is not one of {', '.join(choices)}")


def snes_utilities(population: int, device=None) -> torch.Tensor:
    """SNES's utilities ``u_1 >= ... >= u_lambda`` for ``lambda = population`` members, by rank (k = 1 the best):
    ``max(0, log(lambda/2 + 1) - log k) / sum_j max(0, log(lambda/2 + 1) - log j) - 1/lambda`` (Wierstra et al. 2014,
    fitness shaping). They sum to 0; the better half gets a log-shaped share, the rest ``-1/lambda``. float64."""
    lam = int(population)
    k = torch.arange(1, lam + 1, dtype=torch.float64, device=device)
    raw = (math.log(lam / 2 + 1) - torch.log(k)).clamp(min=0)
    return raw / raw.sum() - 1 / lam


def shape_fitness(losses: torch.Tensor, fitness: str) -> torch.Tensor:
    """The fitness each member's noise is weighted by: ``-loss``, less its mean, its centred rank, or
    ``lambda u_k`` for its rank k (``utilities``: the estimator's ``1/M`` mean is then the paper's ``sum u_k``)."""
    f = -losses.to(torch.float64)
    if fitness == "baseline":
        return f - f.mean()
    if fitness == "ranks":
        return -centred_ranks(losses.to(torch.float64))  # lowest loss -> +0.5
    if fitness == "utilities":
        lam = len(losses)
        order = torch.argsort(losses.to(torch.float64), stable=True)  # best (lowest loss) first
        shaped = torch.empty(lam, dtype=torch.float64, device=losses.device)
        shaped[order] = lam * snes_utilities(lam, losses.device)
        return shaped
    return f


def _finish(
    fe: torch.Tensor,
    fs: torch.Tensor,
    e2: torch.Tensor,
    s2: torch.Tensor,
    members: int,
    sigma: torch.Tensor,
    fisher: str,
) -> NaturalGradient:
    """From the sums over members of ``F eps``, ``F (eps^2-1)``, ``eps^2``, ``(eps^2-1)^2`` to the estimate."""
    sigma = sigma.to(torch.float64)
    if fisher == "exact":
        fisher_mu, fisher_sigma = 1 / sigma**2, 2 / sigma**2
    else:
        fisher_mu, fisher_sigma = e2 / (members * sigma**2), s2 / (members * sigma**2)
    return NaturalGradient(
        grad_mu=fe / (members * sigma),
        grad_sigma=fs / (members * sigma),
        fisher_mu=fisher_mu,
        fisher_sigma=fisher_sigma,
    )


def from_samples(
    eps: torch.Tensor,
    losses: torch.Tensor,
    sigma: torch.Tensor | float,
    fitness: str = "raw",
    fisher: str = "empirical",
) -> NaturalGradient:
    """The estimate from given members: ``eps`` ``(M, n)`` standard normal draws, ``losses`` ``(M,)`` the loss
    of ``mu + sigma eps``. For small problems and for checking ``estimate``."""
    check_options(fitness, fisher)
    eps = eps.to(torch.float64)
    f = shape_fitness(losses, fitness)
    s = eps.square() - 1
    sigma = torch.as_tensor(sigma, dtype=torch.float64, device=eps.device).expand(eps.shape[1])
    return _finish(f @ eps, f @ s, eps.square().sum(0), s.square().sum(0), len(eps), sigma, fisher)


def estimate(
    f: BatchedLoss,
    mu: torch.Tensor,
    sigma: torch.Tensor,
    population: int,
    antithetic: bool = True,
    fitness: str = "raw",
    fisher: str = "empirical",
    seed: int = 0,
    pop_chunk: int = 1024,
) -> NaturalGradient:
    """Natural-gradient estimate at ``N(mu, diag(sigma^2))`` from ``population`` evaluations of the loss ``f``.

    Two passes as in ``nes_gradient``: the losses of every member first (fitness shaping needs them all),
    then the same noise drawn again for the weighted sums, so memory stays bounded at any population.
    """
    check_options(fitness, fisher)
    if population < (2 if antithetic else 1):
        raise UserError(f"nes_natural.population={population} is too small")
    sigma = torch.as_tensor(sigma, dtype=mu.dtype, device=mu.device).expand_as(mu)
    if float(sigma.min()) <= 0:
        raise UserError("nes_natural.sigma must be > 0")
    n, dtype, device = mu.numel(), mu.dtype, mu.device
    base = population // 2 if antithetic else population
    starts = list(range(0, base, max(1, pop_chunk)))
    sizes = [min(pop_chunk, base - s) for s in starts]
    plus, minus = [], []
    for c, rows in enumerate(sizes):
        step = sigma * noise_chunk(c, rows, n, seed, device, dtype)
        out = f(torch.cat([mu + step, mu - step]) if antithetic else mu + step)
        plus.append(out[:rows])
        minus.append(out[rows:])
    losses = torch.cat(plus + minus)  # every member: the + half, then the - half
    fit = shape_fitness(losses, fitness)
    fit_plus, fit_minus = fit[:base], fit[base:]
    members = len(losses)
    fe, fs, e2, s2 = (torch.zeros(n, dtype=torch.float64, device=device) for _ in range(4))
    for c, (start, rows) in enumerate(zip(starts, sizes)):
        eps = noise_chunk(c, rows, n, seed, device, dtype).to(torch.float64)
        eps2 = eps.square()
        sq = eps2 - 1  # the same for +eps and -eps
        wp = fit_plus[start : start + rows]
        copies = 2 if antithetic else 1  # each noise vector stands for this many members
        if antithetic:  # F(+) eps + F(-) (-eps); F(+) s + F(-) s
            wm = fit_minus[start : start + rows]
            fe += (wp - wm) @ eps
            fs += (wp + wm) @ sq
        else:
            fe += wp @ eps
            fs += wp @ sq
        e2 += copies * eps2.sum(0)
        s2 += copies * sq.square().sum(0)
    return _finish(fe, fs, e2, s2, members, sigma, fisher)


def update(
    mu: torch.Tensor,
    sigma: torch.Tensor,
    g: NaturalGradient,
    lr_mu: float | torch.Tensor,
    lr_sigma: float | torch.Tensor,
    sigma_update: str = "additive",
    sigma_min: float = 1e-8,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One natural-gradient ascent step of ``(mu, sigma)``; a tensor of step sizes ``(L,)`` gives ``(L, n)``."""
    check_options("raw", "empirical", sigma_update)
    lr_mu = torch.as_tensor(lr_mu, dtype=torch.float64, device=mu.device)
    lr_sigma = torch.as_tensor(lr_sigma, dtype=torch.float64, device=mu.device)
    if lr_mu.dim():
        lr_mu = lr_mu[:, None]
    if lr_sigma.dim():
        lr_sigma = lr_sigma[:, None]
    s64 = sigma.to(torch.float64)
    new_mu = mu.to(torch.float64) + lr_mu * g.natural_mu
    if sigma_update == "multiplicative":
        new_sigma = s64 * torch.exp(lr_sigma * g.natural_sigma / s64)
    else:
        new_sigma = s64 + lr_sigma * g.natural_sigma
    # a step can overshoot below 0 (additive) or underflow (multiplicative): sigma must stay a valid spread
    new_sigma = new_sigma.clamp_min(sigma_min)
    return new_mu.to(mu.dtype), new_sigma.to(sigma.dtype)


def sample_noise(n: int, seed: int, device: torch.device, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The one draw ``eps*`` a sampled network uses (its own stream, apart from the population's noise)."""
    g = torch.Generator(device=device).manual_seed(seed * 100_019 + 7_777_777)
    return torch.randn(n, generator=g, device=device, dtype=dtype)


def final_weights(
    mu: torch.Tensor, sigma: torch.Tensor, quantize_from: str, eps: torch.Tensor | None = None
) -> torch.Tensor:
    """The weights handed to the quantized network: ``mu`` itself, or the sample
    ``mu + sigma eps`` (``eps`` from ``sample_noise``). grad-bench's network quantizes its activations
    (hard sign forward), so these real weights are what the true loss is measured at."""
    if quantize_from == "mean":
        return mu
    if quantize_from == "sample":
        if eps is None:
            raise ValueError("quantize_from=sample needs the noise eps")
        return mu + sigma * eps
    raise UserError(f"nes_natural.quantize_from={quantize_from} is not one of {', '.join(QUANTIZE_FROM)}")


def optimize(
    f: BatchedLoss,
    mu: torch.Tensor,
    sigma: float | torch.Tensor,
    steps: int,
    population: int,
    lr_mu: float = 1.0,
    lr_sigma: float | None = None,
    antithetic: bool = True,
    fitness: str = "raw",
    fisher: str = "empirical",
    sigma_update: str = "additive",
    sigma_min: float = 1e-8,
    seed: int = 0,
    pop_chunk: int = 1024,
) -> tuple[torch.Tensor, torch.Tensor, list[dict]]:
    """``steps`` natural-gradient steps from ``N(mu, sigma^2)`` (``lr_sigma=None``: SNES's default);
    returns the final ``mu``, ``sigma`` and one record per step (the loss at ``mu``, the mean ``sigma``)."""
    sigma = torch.as_tensor(sigma, dtype=mu.dtype, device=mu.device).expand_as(mu).clone()
    lr_sigma = snes_lr_sigma(mu.numel()) if lr_sigma is None else lr_sigma
    history = []
    for t in range(steps):
        g = estimate(
            f, mu, sigma, population, antithetic, fitness, fisher, seed=seed * 1_000_003 + t, pop_chunk=pop_chunk
        )
        mu, sigma = update(mu, sigma, g, lr_mu, lr_sigma, sigma_update, sigma_min)
        history.append({"step": t + 1, "loss": float(f(mu[None])[0]), "sigma_mean": float(sigma.mean())})
    return mu, sigma, history
