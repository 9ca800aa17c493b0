"""Regularising layers: DropConnect, stochastic depth (drop-path), fractional max-pooling.

Each is random at train time and deterministic at eval time. DropConnect and drop-path
rescale what they keep so that the train-time expectation is the eval-time output
(the "inverted" convention, as ``nn.Dropout``).
"""

from __future__ import annotations

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


class FractionalMaxPool(nn.Module):
    """Fractional max-pooling (Graham, 2014) halving each side, so shapes match ``nn.MaxPool2d(2)``.

    Train: pseudo-random pooling regions on every forward. Eval: fixed regions (every sample
    u = 0.5), so evaluation is repeatable. The windows are 3 wide and overlap (Graham's
    overlapping variant): with 2-wide windows and an exact halving PyTorch's region sequence
    is the fixed 2x2 grid on every even side, i.e. plain max-pooling. Regions are random on
    even sides >= 6; on odd sides they are fixed (3-wide windows at stride 2).
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        kernel = (min(3, h), min(3, w))  # a 2-pixel side can only hold a 2-wide window
        fixed = None if self.training else torch.full((x.shape[0], x.shape[1], 2), 0.5, dtype=x.dtype,
                                                      device=x.device)
        return F.fractional_max_pool2d(x, kernel, output_size=(h // 2, w // 2), _random_samples=fixed)
