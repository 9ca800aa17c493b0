"""Zero-cost proxies: a score of an untrained child from one minibatch, standing in for its trained accuracy.

Each proxy is a function ``(net, x, y) -> float`` in ``PROXIES``: ``net`` at its initialisation (as
``children.build_child`` makes it for training), ``x``/``y`` one training minibatch (``minibatch``). Higher is
better for every one of them. Each works on a copy of ``net`` (its weights, buffers and gradients stay as they
were) and takes the copy as built, in training mode: BatchNorm normalises by the minibatch's own statistics
(synflow removes it), as in the reference code of Abdelfattah et al. (2021, mohsaied/zero-cost-nas), whose
per-weight measures sum over the weights of the convolutions and linear layers (biases and BatchNorm's affine
parameters are not scored).

A score may be undefined for a degenerate child (naswot's K singular: log 0; jacob_cov's correlation of a
constant Jacobian: 0/0); the proxy then returns it as computed (-inf, nan) and ``floor`` says the lowest
value it could otherwise take, which a search gives such a child instead.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Iterable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from nas_cli.engine.device import seed_everything
from nas_cli.errors import UserError

JACOB_COV_K = 1e-5  # Mellor et al. (2020, v1): keeps log and 1/x finite at zero eigenvalues
_WEIGHTED = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)


def _weights(net: nn.Module) -> list[torch.Tensor]:
    """The weights the per-weight proxies score: those of every convolution and linear layer."""
    return [m.weight for m in net.modules() if isinstance(m, _WEIGHTED) and m.weight.requires_grad]


def _loss_grads(net: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """The scored weights of a copy of ``net`` and the gradients of the minibatch's cross-entropy with
    respect to them (zeros for a weight the loss does not reach)."""
    net = copy.deepcopy(net)
    weights = _weights(net)
    loss = F.cross_entropy(net(x), y)
    grads = torch.autograd.grad(loss, weights, allow_unused=True)
    return weights, [torch.zeros_like(w) if g is None else g for w, g in zip(weights, grads)]


def _without_batchnorm(module: nn.Module) -> None:
    for name, child in module.named_children():
        if isinstance(child, nn.modules.batchnorm._BatchNorm):
            setattr(module, name, nn.Identity())
        else:
            _without_batchnorm(child)


def synflow(net: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    """SynFlow (Tanaka et al. 2020), as Abdelfattah et al. (2021) score a network with it: every weight replaced
    by its absolute value and BatchNorm removed (the network is linearised), one all-ones input of one example's
    shape, ``R`` the sum of the outputs; the score is ``sum |theta * dR/dtheta|`` over the weights, in float64
    (products of |theta| over many layers overflow float32)."""
    net = copy.deepcopy(net)
    _without_batchnorm(net)
    device = x.device if x.device.type != "mps" else torch.device("cpu")  # MPS has no float64
    net = net.to(device=device, dtype=torch.float64)
    with torch.no_grad():
        for p in net.parameters():
            p.abs_()
    weights = _weights(net)
    ones = torch.ones((1, *x.shape[1:]), dtype=torch.float64, device=device)
    grads = torch.autograd.grad(net(ones).sum(), weights, allow_unused=True)
    return float(sum(float((w.detach() * g).abs().sum()) for w, g in zip(weights, grads) if g is not None))


def snip(net: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    """SNIP (Lee et al. 2019) summed over the network (Abdelfattah et al. 2021): ``sum |dL/dW * W|`` over the
    weights, ``L`` the cross-entropy of the minibatch (the connection sensitivity of every weight)."""
    weights, grads = _loss_grads(net, x, y)
    return float(sum(float((g * w.detach()).abs().sum()) for w, g in zip(weights, grads)))


def grad_norm(net: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    """grad_norm (Abdelfattah et al. 2021): the sum over the layers of the Euclidean norm of ``dL/dW``, ``L``
    the cross-entropy of the minibatch."""
    _, grads = _loss_grads(net, x, y)
    return float(sum(float(g.norm()) for g in grads))


def jacob_cov(net: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    """jacob_cov (Mellor et al. 2020, arXiv v1; as Abdelfattah et al. 2021): ``J`` the gradient of the sum of
    the outputs with respect to the minibatch, one flattened row per example; ``lambda`` the eigenvalues of
    the rows' correlation matrix; the score is ``-sum(log(lambda + k) + 1 / (lambda + k))``, k = 1e-5.
    nan where a row is constant (its correlation is 0/0)."""
    net = copy.deepcopy(net)
    inputs = x.detach().clone().requires_grad_(True)
    (jacobian,) = torch.autograd.grad(net(inputs).sum(), inputs)
    rows = jacobian.reshape(len(x), -1).double().cpu().numpy()
    with np.errstate(invalid="ignore", divide="ignore"):
        corr = np.atleast_2d(np.corrcoef(rows))
    if not np.isfinite(corr).all():
        return math.nan
    lam = np.linalg.eigvalsh(corr)  # the matrix is symmetric: real eigenvalues
    return float(-np.sum(np.log(lam + JACOB_COV_K) + 1.0 / (lam + JACOB_COV_K)))


def naswot_kernel(codes: Iterable[torch.Tensor]) -> torch.Tensor:
    """``K_H`` of Mellor et al. (2021) from each ReLU's binary codes (N examples x its units, 1 where the
    unit is active): ``K[i, j]`` = the units in all, less the Hamming distance of the codes of ``i`` and ``j``,
    i.e. ``C C^T + (1 - C)(1 - C)^T`` summed over the ReLUs; float64."""
    kernel: torch.Tensor | None = None
    for c in codes:
        c = c.reshape(len(c), -1).double()
        k = c @ c.T + (1 - c) @ (1 - c).T
        kernel = k if kernel is None else kernel + k
    if kernel is None:
        raise ValueError("naswot_kernel needs the codes of at least one ReLU")
    return kernel


def naswot(net: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    """NASWOT (Mellor et al. 2021): ``log |det K_H|`` (``naswot_kernel``) of the binary activation codes of every
    ReLU unit over the minibatch (1 where the unit's pre-activation is positive). -inf where K is singular
    (its rank below the examples: two examples with the same codes, codes that span too little; a network
    without ReLUs has K = 0)."""
    net = copy.deepcopy(net)
    codes: list[torch.Tensor] = []

    def record(module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
        codes.append((output.detach() > 0).cpu())  # relu(z) > 0 exactly where z > 0 (in place or not)

    relus = [m for m in net.modules() if isinstance(m, nn.ReLU)]
    handles = [m.register_forward_hook(record) for m in relus]
    try:
        with torch.no_grad():
            net(x)
    finally:
        for h in handles:
            h.remove()
    if not codes:
        return -math.inf  # K = 0
    kernel = naswot_kernel(codes)
    if int(torch.linalg.matrix_rank(kernel)) < len(kernel):
        return -math.inf  # log 0: slogdet of a singular K returns its round-off (e.g. -35), not -inf
    _, logdet = torch.linalg.slogdet(kernel)
    return float(logdet)


def params(net: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    """The number of trainable parameters (the baseline Abdelfattah et al. 2021 compare the proxies with)."""
    return float(sum(p.numel() for p in net.parameters() if p.requires_grad))


PROXIES: dict[str, Callable[[nn.Module, torch.Tensor, torch.Tensor], float]] = {
    "synflow": synflow,
    "snip": snip,
    "grad_norm": grad_norm,
    "jacob_cov": jacob_cov,
    "naswot": naswot,
    "params": params,
}


def check_proxy(name: str) -> str:
    if name not in PROXIES:
        raise UserError(f"proxy.name={name}: use {' | '.join(PROXIES)}")
    return name


def floor(name: str, n: int) -> float:
    """The lowest defined score of proxy ``name`` on ``n`` examples, given instead of an undefined one.

    naswot: 0, since a nonsingular K has integer entries and is positive semi-definite, so det K >= 1;
    jacob_cov: every correlation but one eigenvalue 0 (the rows perfectly correlated), the eigenvalues
    summing to ``n``; the others are sums of non-negative terms: 0.
    """
    if name == "jacob_cov":
        k = JACOB_COV_K
        return -((n - 1) * (math.log(k) + 1 / k) + math.log(n + k) + 1 / (n + k))
    return 0.0


def minibatch(loader: Iterable, size: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The first ``size`` examples (fewer where the split is smaller) of a pass of the training ``loader``
    ordered by ``seed``, as training sees them (augmented where it augments). The loader's own order is
    left as it was."""
    if int(size) < 1:
        raise UserError(f"proxy.batch={size}: use 1 or more")
    found = getattr(loader, "generator", None)
    generator = found if isinstance(found, torch.Generator) else None
    saved = generator.get_state() if generator is not None else None
    seed_everything(seed)  # the augmentation's draws on the host
    if generator is not None:
        generator.manual_seed(seed)
    xs: list[torch.Tensor] = []
    ys: list[torch.Tensor] = []
    try:
        for bx, by in loader:
            xs.append(bx)
            ys.append(by)
            if sum(len(b) for b in xs) >= size:
                break
    finally:
        if generator is not None and saved is not None:
            generator.set_state(saved)
    if not xs:
        raise UserError("reward=proxy: the training split has no examples")
    return torch.cat(xs)[:size], torch.cat(ys)[:size]
