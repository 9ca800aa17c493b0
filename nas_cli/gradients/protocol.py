"""The one-step protocol: for each estimator and each lr, take ``w <- w - lr g`` and measure the loss drop.

Per num_dim, per init (a student), per batch (fresh inputs, the same teacher): compute every
estimator's gradient on that batch, then the true loss at ``w - lr g`` for all lrs of the grid at once
(one batched evaluation, together with ``w`` itself), on the same batch. ``reinforce`` steps along its estimate
of the gradient of the expected loss of the same network with stochastic binary units (``gradients.reinforce``).
``nes_natural`` starts each block
from ``N(w, sigma^2)``, takes one natural step of mu and sigma per lr, and is measured at the new mean or at
one sample of the new distribution (``quantize_from``). One row per
num_dim x estimator x lr x init x batch. ``summarize`` then averages over inits and batches and picks
each estimator's best lr.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass, fields, is_dataclass, replace
from functools import partial
from typing import Any, NamedTuple, get_type_hints

import numpy as np
import pandas as pd
import torch

from nas_cli.errors import UserError
from nas_cli.gradients import estimators as est
from nas_cli.gradients import natural_nes, problem, reinforce
from nas_cli.models.binary import STE_VARIANTS

COLUMNS = [
    "num_dim",
    "estimator",
    "lr",
    "init",
    "batch",
    "loss_before",
    "loss_after",
    "loss_decrease",
    "relative_decrease",
    "cosine_to_cdg",
    "grad_norm",
    "grad_time_s",
]


def lr_grid(coarse: int, refined: int, low: float, high: float, refined_low: float) -> list[float]:
    """``coarse`` log-spaced lrs on [low, high] joined with ``refined`` log-spaced on [refined_low, high]."""
    points = np.concatenate(
        [
            np.logspace(np.log10(low), np.log10(high), coarse) if coarse > 0 else [],
            np.logspace(np.log10(refined_low), np.log10(high), refined) if refined > 0 else [],
        ]
    )
    if len(points) == 0:
        raise UserError("lr.coarse and lr.refined are both 0: no learning rate to try")
    return sorted({float(f"{p:.6g}") for p in points})


# The settings mirror conf/grad_bench.yaml block by block, field by key, and carry no defaults: the yaml is
# the one place a default is written, and ``Settings.from_config`` builds them from a config node as it is.


@dataclass
class TeacherSettings:
    """``teacher``: the fixed random teacher, one per num_dim (``problem.Problem``)."""

    seed: int
    scale: float
    noise: float


@dataclass
class SteSettings:
    """``ste``: the parameters of the steep and swishsign straight-through estimators."""

    k: float
    beta: float


@dataclass
class NesSettings:
    """``nes``: NES with a fixed sigma, one estimator per population size (``nes_<M>``)."""

    population: list[int]
    sigma: float
    antithetic: bool
    fitness_shaping: bool


@dataclass
class NaturalSettings:
    """``nes_natural``: separable NES with natural-gradient steps of mu and sigma (``natural_nes``).

    ``population`` / ``sigma`` None: the same as ``nes``'s (a like-for-like comparison, common noise).
    The step of mu is ``lr_scale x lr`` natural-gradient units (``lr_scale`` None: ``1 / sigma^2``, so a
    grid lr moves mu as far as it moves the plain estimators); sigma's step is ``lr_sigma`` (None: SNES's).
    ``quantize_from``: one choice or a list of them (one row label each).
    """

    population: list[int] | None
    sigma: float | None
    antithetic: bool
    fitness: str
    fisher: str
    lr_scale: float | None
    lr_sigma: float | None
    sigma_update: str
    sigma_min: float
    quantize_from: list[str]

    def __post_init__(self):
        if isinstance(self.quantize_from, str):
            self.quantize_from = [self.quantize_from]


@dataclass
class ReinforceSettings:
    """``reinforce``: the score-function estimator with stochastic binary units (``gradients.reinforce``).

    ``population``: draws of the stochastic units per input, one estimator each (``reinforce_<M>``).
    """

    population: list[int]
    baseline: str
    temperature: float


@dataclass
class CdgSettings:
    """``cdg``: coordinate central differences of the true loss (the reference)."""

    delta: float


@dataclass
class LrGrid:
    """``lr``: the step sizes, ``grid`` itself when given, else the coarse and refined log grids joined."""

    low: float
    high: float
    coarse: int
    refined: int
    refined_low: float
    grid: list[float] | None

    def values(self) -> list[float]:
        if self.grid is not None:
            return sorted(float(v) for v in self.grid)
        return lr_grid(self.coarse, self.refined, self.low, self.high, self.refined_low)


@dataclass
class Settings:
    """The protocol's settings: conf/grad_bench.yaml's keys, less the run's own (device, plots, ...)."""

    num_dims: list[int]
    num_init: int
    num_batch: int
    batch_size: int
    init_scale: float
    teacher: TeacherSettings
    estimators: list[str]
    ste: SteSettings
    nes: NesSettings
    nes_natural: NaturalSettings
    reinforce: ReinforceSettings
    cdg: CdgSettings
    lr: LrGrid
    chunk_elements: int
    seed: int

    @classmethod
    def from_config(cls, node: Mapping[str, Any]) -> Settings:
        """The settings of a config node (plain containers): each field is the key of its name."""
        return _from_node(cls, node)

    @property
    def lrs(self) -> list[float]:
        return self.lr.values()

    @property
    def natural_populations(self) -> list[int]:
        n = self.nes_natural
        return list(self.nes.population if n.population is None else n.population)

    @property
    def natural_sigma(self) -> float:
        return self.nes.sigma if self.nes_natural.sigma is None else self.nes_natural.sigma


def _from_node(cls: type, node: Mapping[str, Any]):
    """``cls`` (a settings dataclass) from the node of its shape; a field that is a settings dataclass
    itself is built from its sub-node."""
    hints = get_type_hints(cls)
    return cls(
        **{
            f.name: _from_node(hints[f.name], node[f.name]) if is_dataclass(hints[f.name]) else node[f.name]
            for f in fields(cls)
        }
    )


KNOWN = (*STE_VARIANTS, "nes", "nes_natural", "reinforce", "cdg")


def natural_name(m: int, quantize_from: str) -> str:
    """``nes_natural_<M>`` (final weights: the mean), ``nes_natural_<M>_sample`` (a sample of the search
    distribution)."""
    return f"nes_natural_{m}" + ("" if quantize_from == "mean" else f"_{quantize_from}")


def estimator_names(s: Settings) -> list[str]:
    """The row labels: ``ste_<variant>``, ``nes_<M>``, ``nes_natural_<M>[_sample]`` and ``reinforce_<M>`` per
    population, ``cdg``."""
    names = []
    for e in s.estimators:
        if e not in KNOWN:
            raise UserError(f"estimators: '{e}' is not one of {', '.join(KNOWN)}")
        if e == "nes":
            names += [f"nes_{m}" for m in s.nes.population]
        elif e == "nes_natural":
            names += [natural_name(m, q) for m in s.natural_populations for q in s.nes_natural.quantize_from]
        elif e == "reinforce":
            names += [f"reinforce_{m}" for m in s.reinforce.population]
        else:
            names.append("cdg" if e == "cdg" else f"ste_{e}")
    return names


def validate(s: Settings) -> None:
    bad_dims = [d for d in s.num_dims if int(d) < 1]
    if not s.num_dims or bad_dims:
        raise UserError(f"num_dims={list(s.num_dims)}: give positive integers, e.g. [2,4,8,16,32,64]")
    for key in ("num_init", "num_batch", "batch_size", "chunk_elements"):
        if getattr(s, key) < 1:
            raise UserError(f"{key}={getattr(s, key)} must be >= 1")
    if "nes" in s.estimators and (not s.nes.population or min(s.nes.population) < 2):
        raise UserError(f"nes.population={list(s.nes.population)}: give population sizes >= 2, e.g. [500,5000]")
    if any(lr <= 0 for lr in s.lrs):
        raise UserError("every learning rate must be > 0")
    if "nes_natural" in s.estimators:
        _validate_natural(s)
    if "reinforce" in s.estimators:
        r = s.reinforce
        if not r.population:
            raise UserError("reinforce.population=[]: give draws per input, e.g. [10,100]")
        for m in r.population:
            reinforce.check_options(m, r.baseline, r.temperature)
    estimator_names(s)


def _validate_natural(s: Settings) -> None:
    n = s.nes_natural
    pops = s.natural_populations
    if not pops or min(pops) < (2 if n.antithetic else 1):
        raise UserError(f"nes_natural.population={pops}: give population sizes >= 2, e.g. [500,5000]")
    if s.natural_sigma <= 0:
        raise UserError(f"nes_natural.sigma={s.natural_sigma} must be > 0")
    natural_nes.check_options(n.fitness, n.fisher, n.sigma_update)
    bad = [q for q in n.quantize_from if q not in natural_nes.QUANTIZE_FROM]
    if not n.quantize_from or bad or len(set(n.quantize_from)) < len(n.quantize_from):
        raise UserError(f"nes_natural.quantize_from={list(n.quantize_from)}: give mean, sample or [mean,sample]")
    for key in ("lr_scale", "lr_sigma"):
        value = getattr(n, key)
        if value is not None and value <= 0:
            raise UserError(f"nes_natural.{key}={value} must be > 0 (or null for the default)")
    if n.sigma_min <= 0:
        raise UserError(f"nes_natural.sigma_min={n.sigma_min} must be > 0")


class Estimate(NamedTuple):
    """One estimator's result at ``theta``: ``grad``, the direction stepped along (``w - lr grad``; for
    ``nes_natural`` the natural gradient of the expected loss times ``lr_scale``), the seconds it took and,
    for ``nes_natural``, the whole estimate (mu and sigma) and which final weights its rows measure."""

    grad: torch.Tensor
    seconds: float
    natural: natural_nes.NaturalGradient | None = None
    quantize_from: str = "mean"


def natural_lr_scale(s: Settings) -> float:
    """The natural step of mu per grid lr: ``1 / sigma^2`` unless set (the natural gradient of a Gaussian's
    mean is ``sigma^2`` times the plain one, so this keeps a grid lr's step the same length for all)."""
    return 1 / s.natural_sigma**2 if s.nes_natural.lr_scale is None else s.nes_natural.lr_scale


def gradients(
    s: Settings, theta: torch.Tensor, x: torch.Tensor, y: torch.Tensor, noise_seed: int
) -> dict[str, Estimate]:
    """Every estimator's gradient at ``theta`` on ``(x, y)``, with the seconds it took."""

    def f(rows: torch.Tensor) -> torch.Tensor:
        return problem.batched_losses(rows, x, y, s.chunk_elements)

    pop_chunk = max(1, s.chunk_elements // theta.numel())
    out: dict[str, Estimate] = {}
    for e in s.estimators:
        runs: Iterable[tuple[str, Callable[[], torch.Tensor]]]
        if e == "nes_natural":
            for m in s.natural_populations:
                out.update(_natural(s, f, theta, m, noise_seed, pop_chunk))
            continue
        if e == "nes":
            runs = [
                (
                    f"nes_{m}",
                    partial(
                        est.nes_gradient,
                        f,
                        theta,
                        s.nes.sigma,
                        m,
                        s.nes.antithetic,
                        s.nes.fitness_shaping,
                        seed=noise_seed,
                        pop_chunk=pop_chunk,
                    ),
                )
                for m in s.nes.population
            ]
        elif e == "reinforce":
            r = s.reinforce
            runs = [
                (
                    f"reinforce_{m}",
                    partial(
                        reinforce.reinforce_gradient,
                        theta,
                        x,
                        y,
                        m,
                        r.baseline,
                        r.temperature,
                        seed=noise_seed,
                        chunk_elements=s.chunk_elements,
                    ),
                )
                for m in r.population
            ]
        elif e == "cdg":
            runs = [("cdg", partial(est.cdg_gradient, f, theta, s.cdg.delta, coord_chunk=pop_chunk))]
        else:
            runs = [(f"ste_{e}", partial(est.ste_gradient, theta, x, y, e, s.ste.k, s.ste.beta))]
        for name, compute in runs:
            g, seconds = _timed(compute, theta.device)
            out[name] = Estimate(g, seconds)
    return out


def _natural(
    s: Settings, f: Callable[[torch.Tensor], torch.Tensor], theta: torch.Tensor, m: int, noise_seed: int, pop_chunk: int
) -> dict[str, Estimate]:
    """``nes_natural`` with population ``m`` at ``N(theta, sigma^2)``: one estimate, a row label per final-weights
    choice. The noise seed is ``nes``'s: both see the same population."""
    n = s.nes_natural
    sigma = torch.full_like(theta, s.natural_sigma)
    ng, seconds = _timed(
        lambda: natural_nes.estimate(
            f, theta, sigma, m, n.antithetic, n.fitness, n.fisher, seed=noise_seed, pop_chunk=pop_chunk
        ),
        theta.device,
    )
    grad = (-natural_lr_scale(s) * ng.natural_mu).to(theta.dtype)  # descent direction on the loss
    return {natural_name(m, q): Estimate(grad, seconds, ng, q) for q in n.quantize_from}


def _timed(compute: Callable[[], object], device: torch.device) -> tuple:
    _sync(device)
    start = time.perf_counter()
    result = compute()
    _sync(device)
    return result, time.perf_counter() - start


def candidates(s: Settings, theta: torch.Tensor, e: Estimate, lrs: torch.Tensor, noise_seed: int) -> torch.Tensor:
    """``theta`` itself, then the weights after one step at each lr: ``theta - lr grad``; for ``nes_natural``
    the natural step of ``(mu, sigma)`` from ``N(theta, sigma^2)`` and its final weights (``quantize_from``):
    the new mean, or one sample of the new distribution (the same noise ``eps*`` at every lr)."""
    if e.natural is None:
        return torch.cat([theta[None], theta[None] - lrs[:, None] * e.grad[None]])
    n = s.nes_natural
    lr_sigma = natural_nes.snes_lr_sigma(theta.numel()) if n.lr_sigma is None else n.lr_sigma
    mu, sigma = natural_nes.update(
        theta,
        torch.full_like(theta, s.natural_sigma),
        e.natural,
        lrs.double() * natural_lr_scale(s),
        lr_sigma,
        n.sigma_update,
        n.sigma_min,
    )
    eps = natural_nes.sample_noise(theta.numel(), noise_seed, theta.device, theta.dtype)
    return torch.cat([theta[None], natural_nes.final_weights(mu, sigma.expand_as(mu), e.quantize_from, eps)])


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def blocks(s: Settings) -> list[tuple[int, int, int]]:
    """The protocol's (num_dim, init, batch) blocks, in the order it runs them."""
    return [(int(d), i, b) for d in s.num_dims for i in range(s.num_init) for b in range(s.num_batch)]


def run(
    s: Settings,
    device: torch.device,
    on_rows: Callable[[list[dict]], None] | None = None,
    on_progress: Callable[[str], None] | None = None,
    skip: Collection[tuple[int, int, int]] = frozenset(),
) -> list[dict]:
    """Every row of the protocol; ``on_rows`` sees each (num_dim, init, batch) block as it is done.

    Each block draws from its own seeds, so the blocks in ``skip`` (done by an earlier, interrupted
    run) are left out without changing any other block's rows.
    """
    validate(s)
    rows: list[dict] = []
    lrs = torch.tensor(s.lrs, device=device, dtype=torch.float32)
    for d in s.num_dims:
        prob = problem.Problem(
            int(d), s.batch_size, s.seed, s.teacher.seed, s.teacher.scale, s.teacher.noise, s.init_scale, device
        )
        for i in range(s.num_init):
            theta = prob.init(i)
            for b in range(s.num_batch):
                if (int(d), i, b) in skip:
                    continue
                x, y = prob.batch(b)
                noise_seed = s.seed * 7919 + int(d) * 131 + i * 17 + b
                grads = gradients(s, theta, x, y, noise_seed=noise_seed)
                if "cdg" in grads:
                    ref = grads["cdg"].grad
                else:  # the reference is needed for the cosines even when CDG is not compared
                    ref = gradients(replace(s, estimators=["cdg"]), theta, x, y, 0)["cdg"].grad
                block = []
                for name, e in grads.items():
                    g, seconds = e.grad, e.seconds
                    weights = candidates(s, theta, e, lrs, noise_seed)
                    losses = problem.batched_losses(weights, x, y, s.chunk_elements).cpu().numpy()
                    # loss_before is the student theta for every estimator (a sampled network included)
                    before, cos, norm = float(losses[0]), est.cosine(g, ref), float(g.double().norm())
                    for lr, after in zip(s.lrs, losses[1:]):
                        block.append(
                            {
                                "num_dim": int(d),
                                "estimator": name,
                                "lr": lr,
                                "init": i,
                                "batch": b,
                                "loss_before": before,
                                "loss_after": float(after),
                                "loss_decrease": before - float(after),
                                "relative_decrease": (before - float(after)) / before if before else 0.0,
                                "cosine_to_cdg": cos,
                                "grad_norm": norm,
                                "grad_time_s": seconds,
                            }
                        )
                rows += block
                if on_rows:
                    on_rows(block)
                if on_progress:
                    on_progress(f"num_dim={d} init={i} batch={b}: loss {block[0]['loss_before']:.4f}")
    return rows


def summarize(rows: list[dict] | pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """``(curves, best)``: the mean (and std) loss decrease per num_dim x estimator x lr over inits and
    batches, and per num_dim x estimator the lr with the largest mean decrease."""
    frame = pd.DataFrame(rows)
    curves = (
        frame.groupby(["num_dim", "estimator", "lr"], sort=True)
        .agg(
            loss_decrease=("loss_decrease", "mean"),
            loss_decrease_std=("loss_decrease", "std"),
            relative_decrease=("relative_decrease", "mean"),
            cosine_to_cdg=("cosine_to_cdg", "mean"),
            n=("loss_decrease", "size"),
        )
        .reset_index()
    )
    best = curves.loc[curves.groupby(["num_dim", "estimator"], sort=True)["loss_decrease"].idxmax()]
    best = best.rename(
        columns={
            "lr": "best_lr",
            "loss_decrease": "best_loss_decrease",
            "loss_decrease_std": "best_loss_decrease_std",
            "relative_decrease": "best_relative_decrease",
        }
    )
    times = frame.groupby(["num_dim", "estimator"])["grad_time_s"].mean().rename("grad_time_s")
    best = best.merge(times.reset_index(), on=["num_dim", "estimator"]).reset_index(drop=True)
    return curves, best
