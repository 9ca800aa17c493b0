"""Regularising layers: DropConnect, stochastic depth (drop-path), fractional max-pooling.

Each is random at train time and deterministic at eval time. DropConnect and drop-path
rescale what they keep so that the train-time expectation is the eval-time output
(the "inverted" convention, as ``nn.Dropout``).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from nas_cli.errors import UserError


def check_prob(name: str, p: float) -> float:
    """A drop probability in [0, 1): at 1 nothing survives, and the 1/(1-p) rescale is undefined."""
    if not 0.0 <= p < 1.0:
        raise UserError(f"model.{name}={p} must be a probability in [0, 1)")
    return float(p)


class DropConnectLinear(nn.Linear):
    """A linear layer whose weights are dropped with probability ``p`` at train time (Wan et al., 2013).

    Train: one Bernoulli(1-p) mask over the weight matrix per forward, shared by the batch,
    and ``W * mask / (1-p)``, whose expectation is ``W``. Eval: ``W`` itself. The bias is kept.
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True, p: float = 0.0):
        super().__init__(in_features, out_features, bias=bias)
        self.p = check_prob("dropconnect", p)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return super().forward(x)
        keep = 1.0 - self.p
        mask = torch.empty_like(self.weight).bernoulli_(keep)
        return F.linear(x, self.weight * mask / keep, self.bias)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, p={self.p}"


def linear(in_features: int, out_features: int, bias: bool = True, dropconnect: float = 0.0) -> nn.Linear:
    """``nn.Linear``, or ``DropConnectLinear`` when ``dropconnect`` > 0: same parameters and state-dict keys."""
    if check_prob("dropconnect", dropconnect) > 0:
        return DropConnectLinear(in_features, out_features, bias=bias, p=dropconnect)
    return nn.Linear(in_features, out_features, bias=bias)


def drop_path(x: torch.Tensor, p: float) -> torch.Tensor:
    """Zero whole samples with probability ``p`` and scale the kept ones by 1/(1-p)."""
    keep = 1.0 - p
    mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)  # one draw per sample
    return x * mask / keep


class DropPath(nn.Module):
    """Stochastic depth (Huang et al., 2016) on a residual branch: per sample, zero the branch with
    probability ``p`` at train time and scale kept ones by 1/(1-p); identity at eval."""

    def __init__(self, p: float = 0.0):
        super().__init__()
        self.p = check_prob("drop_path", p)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return drop_path(x, self.p) if self.training and self.p > 0.0 else x

    def extra_repr(self) -> str:
        return f"p={self.p}"


FMP_RATIO = math.sqrt(2)  # Graham's usual alpha: two layers halve the area once


def check_fmp_ratio(ratio: float) -> float:
    """Graham's pooling fraction alpha must lie in (1, 2): disjoint regions then have 1 or 2 rows."""
    try:
        ok = 1.0 < float(ratio) < 2.0
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise UserError(
            f"model.fmp_ratio={ratio} must be in (1, 2) (sqrt(2) ~ 1.414 is Graham's default; "
            f"for a ratio of 2 use model.pool=max)"
        )
    return float(ratio)


def fmp_output_size(n: int, ratio: float) -> int:
    """The side after fractional max-pooling: floor(n / alpha)."""
    return math.floor(n / ratio)


def fmp_boundaries(n: int, m: int, u: torch.Tensor) -> torch.Tensor:
    """Region boundaries 0 = a_0 < a_1 < ... < a_m = n, one row per offset in ``u`` (values in [0, 1)).

    Graham's pseudorandom sequence a_i = ceil(alpha' (i + u)), shifted to start at 0, with
    alpha' = n / m (alpha up to the floor of the output size), so that it ends exactly at n: the
    increments are floor(alpha') or ceil(alpha'), i.e. 1 or 2 whenever n <= 2m.
    """
    scale = n / m
    i = torch.arange(m, dtype=torch.float64, device=u.device)
    u = u.to(torch.float64)[:, None]
    a = torch.ceil(scale * (i + u)) - torch.ceil(scale * u)
    return torch.cat([a.long(), a.new_full((len(a), 1), n).long()], dim=1)


def fmp_indices(boundaries: torch.Tensor, n: int, overlap: bool) -> torch.Tensor:
    """Input positions pooled into each output, shape (N, m, width): region i is
    [a_i, a_{i+1}) (disjoint) or [a_i, a_{i+1}] (overlapping, cut at the edge); shorter regions
    repeat their last position, which leaves their max unchanged."""
    start, end = boundaries[:, :-1], (boundaries[:, 1:] + int(overlap)).clamp(max=n)
    width = -(-n // start.shape[1]) + int(overlap)  # ceil(alpha') + overlap, known without a device sync
    offsets = torch.arange(width, device=boundaries.device)
    return torch.minimum(start[..., None] + offsets, end[..., None] - 1)


def max_over_regions(x: torch.Tensor, index: torch.Tensor, dim: int) -> torch.Tensor:
    """Max of ``x`` (N, C, H, W) along ``dim`` (2 or 3) over per-sample regions ``index`` (N, m, width)."""
    n_batch, m, width = index.shape
    shape = [n_batch, 1, 1, 1]
    shape[dim] = m * width
    full = list(x.shape)
    full[dim] = m * width
    gathered = x.gather(dim, index.reshape(shape).expand(full))
    split = full[:dim] + [m, width] + full[dim + 1 :]
    return gathered.reshape(split).amax(dim=dim + 1)


class FractionalMaxPool(nn.Module):
    """Fractional max-pooling (Graham, 2014): each side n shrinks to floor(n / ``ratio``), ratio in (1, 2).

    Pooling regions come from Graham's pseudorandom sequences (``fmp_boundaries``), drawn anew
    for every sample and forward at train time, one sequence for rows and one for columns; at
    eval every offset is u = 0.5, so evaluation is repeatable (Graham instead averages several
    random draws at test time). ``overlap=True`` (default) uses his overlapping regions
    [a_i, a_{i+1}], which share their border row with the next region; ``False`` tiles the
    input with disjoint ones. The max over a rectangle is taken rows first, then columns.
    ``name`` says which layer is meant when an input is too small.
    """

    def __init__(self, ratio: float = FMP_RATIO, overlap: bool = True, name: str = "fractional max-pool"):
        super().__init__()
        self.ratio, self.overlap, self.name = check_fmp_ratio(ratio), bool(overlap), name

    def output_size(self, h: int, w: int) -> tuple[int, int]:
        """Output (height, width); a UserError naming the layer if a side would vanish."""
        out = (fmp_output_size(h, self.ratio), fmp_output_size(w, self.ratio))
        if min(out) < 1:
            raise UserError(
                f"{self.name}: a {h}x{w} input is too small for fractional max-pooling with "
                f"model.fmp_ratio={self.ratio:g} (each side must be >= 2); use larger inputs"
            )
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        out_h, out_w = self.output_size(h, w)
        n = x.shape[0]
        if self.training:
            u_rows, u_cols = torch.rand(2, n, device=x.device)
        else:
            u_rows = u_cols = torch.full((n,), 0.5, device=x.device)
        rows = fmp_indices(fmp_boundaries(h, out_h, u_rows), h, self.overlap)
        cols = fmp_indices(fmp_boundaries(w, out_w, u_cols), w, self.overlap)
        return max_over_regions(max_over_regions(x, rows, 2), cols, 3)

    def extra_repr(self) -> str:
        return f"ratio={self.ratio:g}, overlap={self.overlap}"
