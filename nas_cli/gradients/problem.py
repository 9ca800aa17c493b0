"""The benchmark problem: a 3-layer MLP with sign activations fitted to a random teacher of the same form.

Weights are one flat vector ``theta`` of length ``3 d^2`` (``d = num_dim``), read as three ``d x d``
matrices ``W1, W2, W3`` (row-major, in that order); there are no biases. The network maps R^d -> R^d:

    net(x; theta) = W3 sign(W2 sign(W1 x))          (sign(0) = +1)

The loss is the mean squared error to the teacher's outputs, averaged over samples and output
coordinates: ``L(theta) = mean((net(x; theta) - y)^2)``, with ``y = net(x; theta_teacher) + noise * z``.
This is the *true* loss: the forward pass uses the hard sign whatever estimator asks for it.
Inputs are i.i.d. N(0, 1); weights are drawn N(0, scale^2 / d), so every pre-activation has variance
about ``scale^2``.
"""

from __future__ import annotations

import math

import torch

from nas_cli.models.binary import binary_sign, sign


def num_params(d: int) -> int:
    return 3 * d * d


def unflatten(theta: torch.Tensor, d: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(..., 3 d^2)`` -> three ``(..., d, d)`` matrices (views)."""
    w = theta.reshape(*theta.shape[:-1], 3, d, d)
    return w[..., 0, :, :], w[..., 1, :, :], w[..., 2, :, :]


def random_weights(d: int, scale: float, generator: torch.Generator, device: torch.device) -> torch.Tensor:
    return torch.randn(num_params(d), generator=generator, device=device) * (scale / math.sqrt(d))


def forward(
    theta: torch.Tensor, x: torch.Tensor, ste: str | None = None, k: float = 2.0, beta: float = 5.0
) -> torch.Tensor:
    """``net(x; theta)`` for one weight vector; ``ste`` set: sign forward, that STE's surrogate backward."""
    w1, w2, w3 = unflatten(theta, x.shape[-1])
    act = sign if ste is None else (lambda z: binary_sign(z, ste, k, beta))
    return act(act(x @ w1.T) @ w2.T) @ w3.T


def loss(
    theta: torch.Tensor, x: torch.Tensor, y: torch.Tensor, ste: str | None = None, k: float = 2.0, beta: float = 5.0
) -> torch.Tensor:
    return ((forward(theta, x, ste, k, beta) - y) ** 2).mean()


def chunk_sizes(pop: int, n: int, d: int, chunk_elements: int) -> tuple[int, int]:
    """Population and input chunk sizes so that one ``(m, d, n)`` activation holds <= chunk_elements
    (inputs first: a whole batch per member keeps the number of tensor ops small)."""
    n_chunk = max(1, min(n, chunk_elements // d))
    m_chunk = max(1, min(pop, chunk_elements // (n_chunk * d)))
    return m_chunk, n_chunk


def _sign_(z: torch.Tensor) -> torch.Tensor:
    """``sign`` (nas_cli.models.binary: sign(0) = +1) in place: no new tensor the size of a population chunk."""
    return z.sign_().masked_fill_(z == 0, 1.0)


def batched_losses(
    thetas: torch.Tensor, x: torch.Tensor, y: torch.Tensor, chunk_elements: int = 1 << 24
) -> torch.Tensor:
    """The true loss of each row of ``thetas`` (``(M, 3 d^2)``) on the shared batch ``x, y``: ``(M,)`` float64.

    Batched tensor ops over the population: activations are kept as ``(m, d, n)`` (member, unit, input),
    so the first layer is one broadcast matmul ``W1 @ x^T`` and the next two are ``bmm``; chunked over the
    population and the inputs so that no activation holds more than ``chunk_elements`` numbers.
    Squared errors are summed over units in float32, over inputs in float64.
    """
    pop, (n, d) = thetas.shape[0], x.shape
    m_chunk, n_chunk = chunk_sizes(pop, n, d, chunk_elements)
    xt, yt = x.T.contiguous(), y.T.contiguous()
    total = torch.zeros(pop, dtype=torch.float64, device=thetas.device)
    for m0 in range(0, pop, m_chunk):
        w1, w2, w3 = unflatten(thetas[m0 : m0 + m_chunk], d)
        for n0 in range(0, n, n_chunk):
            h = _sign_(torch.matmul(w1, xt[:, n0 : n0 + n_chunk]))  # (m, d, n)
            h = _sign_(torch.bmm(w2, h))
            err = torch.bmm(w3, h).sub_(yt[:, n0 : n0 + n_chunk])
            total[m0 : m0 + m_chunk] += err.square_().sum(dim=1).sum(dim=1, dtype=torch.float64)
    return total / (n * d)


class Problem:
    """One teacher and its inputs: ``batch(b)`` draws batch ``b`` reproducibly; ``init(i)`` a student."""

    def __init__(
        self,
        d: int,
        batch_size: int,
        seed: int,
        teacher_seed: int,
        teacher_scale: float,
        teacher_noise: float,
        init_scale: float,
        device: torch.device,
    ):
        self.d, self.batch_size, self.seed, self.device = d, batch_size, seed, device
        self.noise, self.init_scale = teacher_noise, init_scale
        g = torch.Generator(device=device).manual_seed(teacher_seed * 1009 + d)
        self.teacher = random_weights(d, teacher_scale, g, device)

    def _gen(self, *parts: int) -> torch.Generator:
        s = self.seed
        for p in parts:
            s = s * 1_000_003 + p
        return torch.Generator(device=self.device).manual_seed(s % (2**63 - 1))

    def batch(self, b: int) -> tuple[torch.Tensor, torch.Tensor]:
        g = self._gen(1, self.d, b)
        x = torch.randn(self.batch_size, self.d, generator=g, device=self.device)
        with torch.no_grad():
            y = forward(self.teacher, x)
        if self.noise:
            y = y + self.noise * torch.randn(y.shape, generator=g, device=self.device)
        return x, y

    def init(self, i: int) -> torch.Tensor:
        return random_weights(self.d, self.init_scale, self._gen(2, self.d, i), self.device)
