"""The score-function (REINFORCE) estimator for grad-bench's sign network (``reinforce`` in grad-bench).

The hard signs become stochastic binary units: a hidden unit with pre-activation ``a`` outputs +1 with
probability ``sigmoid(a / T)`` and -1 otherwise (``T`` the temperature; as T -> 0 this is the hard sign)::

    h1 ~ B(sigmoid(W1 x / T)),   h2 ~ B(sigmoid(W2 h1 / T)),   net(x) = W3 h2,   L(h) = mean_k (net_k - y_k)^2

The estimate is of the gradient of the *expected* loss of that stochastic network, ``J = E_h[L(h)]`` (the
loss plays the part of the reward, to be minimised). W1 and W2 only change the distribution of ``h``: their
gradient is the likelihood ratio (Williams 1992); W3 acts on the sampled ``h2`` directly, so its gradient
is the ordinary one of the sampled loss::

    dJ/dW1 = E[(L - b) s1 x^T],   dJ/dW2 = E[(L - b) s2 h1^T],   dJ/dW3 = E[2/d (W3 h2 - y) h2^T]
    s = d log p(h | a) / d a = ((1 + h) / 2 - sigmoid(a / T)) / T        (per unit)

Any baseline ``b`` that does not depend on the draw it is subtracted from leaves the expectation unchanged
(``E[s] = 0``) and only lowers the variance. ``baseline="loo"`` (default): each input gets ``population``
draws, and each draw's baseline is the mean loss of the *other* draws of the same input (leave-one-out,
Kool et al. 2019, "Buy 4 REINFORCE samples, get a baseline for free"): unbiased, per input, no extra
evaluations. ``baseline="none"``: the plain estimator, ``b = 0``.

``population`` plays the part NES's plays: the number of stochastic forward passes over the whole batch (M
draws of ``h`` per input), so ``reinforce_500`` costs about the forward passes of ``nes_500``.
The draws are made in input chunks with all M draws of an input together (the baseline needs them), so no
activation holds more than ``chunk_elements`` numbers (at least one input's M x d).
"""

from __future__ import annotations

import torch

from nas_cli.errors import UserError
from nas_cli.gradients import problem

BASELINES = ("loo", "none")


def check_options(population: int, baseline: str, temperature: float) -> None:
    if baseline not in BASELINES:
        raise UserError(f"reinforce.baseline={baseline} is not one of {', '.join(BASELINES)}")
    if population < (2 if baseline == "loo" else 1):
        raise UserError(f"reinforce.population={population} is too small (baseline=loo needs >= 2 draws)")
    if temperature <= 0:
        raise UserError(f"reinforce.temperature={temperature} must be > 0")


def _stochastic_sign(
    logits: torch.Tensor, uniform: torch.Tensor, temperature: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """A draw ``h`` (+1 with probability sigmoid(a / T)) and its score ``d log p(h) / d a``."""
    p = torch.sigmoid(logits / temperature)
    h = torch.where(uniform < p, 1.0, -1.0).to(logits.dtype)
    return h, ((1 + h) / 2 - p) / temperature


def _advantage(losses: torch.Tensor, baseline: str) -> torch.Tensor:
    """``L - b`` per draw and input, ``losses`` ``(M, n)``."""
    if baseline == "none":
        return losses
    m = losses.shape[0]
    return losses - (losses.sum(0, keepdim=True) - losses) / (m - 1)


def reinforce_gradient(
    theta: torch.Tensor,
    x: torch.Tensor,
    y: torch.Tensor,
    population: int,
    baseline: str = "loo",
    temperature: float = 1.0,
    seed: int = 0,
    chunk_elements: int = 1 << 24,
) -> torch.Tensor:
    """The REINFORCE estimate of ``grad E_h[L]`` at ``theta`` (``3 d^2``) on the batch ``x, y`` (``(n, d)``),
    ``population`` draws of the stochastic units per input; the same seed gives the same draws."""
    check_options(population, baseline, temperature)
    n, d = x.shape
    w1, w2, w3 = problem.unflatten(theta.detach(), d)
    gen = torch.Generator(device=theta.device).manual_seed(seed * 100_043 + 31_337)
    grads = [torch.zeros(d, d, dtype=torch.float64, device=theta.device) for _ in range(3)]
    n_chunk = max(1, min(n, chunk_elements // (population * d)))
    for n0 in range(0, n, n_chunk):
        xc, yc = x[n0 : n0 + n_chunk], y[n0 : n0 + n_chunk]  # (c, d)
        shape = (population, d, len(xc))  # (draw, unit, input)
        h1, s1 = _stochastic_sign((w1 @ xc.T).expand(shape), _uniform(shape, gen, theta), temperature)
        h2, s2 = _stochastic_sign(torch.matmul(w2, h1), _uniform(shape, gen, theta), temperature)
        err = torch.matmul(w3, h2) - yc.T  # (M, d, c)
        adv = _advantage(err.square().mean(1), baseline)[:, None]  # (M, 1, c)
        grads[0] += ((adv * s1).sum(0) @ xc).double()
        grads[1] += (adv * s2 @ h1.transpose(1, 2)).sum(0).double()
        grads[2] += (err @ h2.transpose(1, 2)).sum(0).double() * (2 / d)
    return (torch.cat([g.flatten() for g in grads]) / (n * population)).to(theta.dtype)


def _uniform(shape: tuple[int, ...], gen: torch.Generator, like: torch.Tensor) -> torch.Tensor:
    return torch.rand(shape, generator=gen, device=like.device, dtype=like.dtype)


def expected_loss(theta: torch.Tensor, x: torch.Tensor, y: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """``E_h[L]`` exactly, summed over every sign pattern of both hidden layers (``4^d`` of them: tiny d only).
    Differentiable in ``theta``: the reference the estimator's mean is checked against."""
    n, d = x.shape
    if d > 6:
        raise ValueError("expected_loss enumerates 4^d patterns: d <= 6")
    w1, w2, w3 = problem.unflatten(theta, d)
    codes = torch.arange(2**d, device=x.device)
    patterns = ((codes[:, None] >> torch.arange(d, device=x.device)) & 1).to(x.dtype) * 2 - 1  # (2^d, d)

    def log_prob(h: torch.Tensor, a: torch.Tensor) -> torch.Tensor:  # sum over units of log p(h | a)
        return torch.nn.functional.logsigmoid(h * a / temperature).sum(-1)  # p(+1) = s(a), p(-1) = s(-a)

    lp1 = log_prob(patterns[:, None, :], (x @ w1.T)[None])  # (P1, n)
    lp2 = log_prob(patterns[None, :, None, :], (patterns @ w2.T)[:, None, None, :])  # (P1, P2, 1)
    losses = ((patterns @ w3.T)[:, None, :] - y[None]).square().mean(-1)  # (P2, n)
    weights = torch.exp(lp1[:, None, :] + lp2)  # (P1, P2, n)
    return (weights * losses[None]).sum((0, 1)).mean()
