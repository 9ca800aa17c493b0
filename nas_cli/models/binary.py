"""Binary weights and activations: sign forward, a chosen straight-through estimator (STE) backward.

Activation STEs (``ste=``), each the derivative of a smooth surrogate of sign(x):
* ``clipped``:    1[|x| <= 1]                                      (hardtanh)
* ``steep``:      k * 1[|x| <= 1/k]                                 (hardtanh(k x))
* ``swishsign``:  beta (2 - beta x tanh(beta x / 2)) / (1 + cosh(beta x))   (SignSwish)
* ``polynomial``: (2 - 2|x|) * 1[|x| <= 1]                          (ApproxSign)
Weights use the clipped identity: the gradient passes where |w| <= 1.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from nas_cli.errors import UserError

STE_VARIANTS = ("clipped", "steep", "swishsign", "polynomial")


def ste_grad(x: torch.Tensor, ste: str = "clipped", k: float = 2.0, beta: float = 5.0) -> torch.Tensor:
    """d(surrogate)/dx at ``x``: what the backward pass multiplies the incoming gradient by."""
    if ste == "clipped":
        return (x.abs() <= 1).to(x.dtype)
    if ste == "steep":
        return k * (x.abs() <= 1 / k).to(x.dtype)
    if ste == "swishsign":
        bx = beta * x
        return beta * (2 - bx * torch.tanh(bx / 2)) / (1 + torch.cosh(bx))
    if ste == "polynomial":
        return (2 - 2 * x.abs()).clamp(min=0)
    raise UserError(f"ste={ste} is not one of {', '.join(STE_VARIANTS)}")


def sign(x: torch.Tensor) -> torch.Tensor:
    """sign with sign(0) = +1, so every output is binary."""
    return torch.where(x >= 0, torch.ones_like(x), -torch.ones_like(x))


class _SignSTE(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, ste: str, k: float, beta: float):
        ctx.save_for_backward(x)
        ctx.params = (ste, k, beta)
        return sign(x)

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        return grad * ste_grad(x, *ctx.params), None, None, None


def binary_sign(x: torch.Tensor, ste: str = "clipped", k: float = 2.0, beta: float = 5.0) -> torch.Tensor:
    """sign(x) forward; the ``ste`` surrogate's derivative backward."""
    if ste not in STE_VARIANTS:
        raise UserError(f"ste={ste} is not one of {', '.join(STE_VARIANTS)}")
    return _SignSTE.apply(x, ste, k, beta)


class BinaryActivation(nn.Module):
    def __init__(self, ste: str = "clipped", k: float = 2.0, beta: float = 5.0):
        super().__init__()
        if ste not in STE_VARIANTS:
            raise UserError(f"model.ste={ste} is not one of {', '.join(STE_VARIANTS)}")
        self.ste, self.k, self.beta = ste, k, beta

    def forward(self, x):
        return binary_sign(x, self.ste, self.k, self.beta)

    def extra_repr(self) -> str:
        return f"ste={self.ste}, k={self.k}, beta={self.beta}"


class XNORConv2d(nn.Conv2d):
    """A convolution with weights ``sign(W) * alpha``, ``alpha`` = mean |W| per output channel (XNOR-Net).

    Backward: the clipped identity through sign (gradient where |W| <= 1), plus the
    gradient through alpha, which autograd handles since alpha is computed from W.
    """

    def binary_weight(self) -> torch.Tensor:
        w = self.weight
        alpha = w.abs().mean(dim=tuple(range(1, w.dim())), keepdim=True)
        return binary_sign(w, "clipped") * alpha

    def forward(self, x):
        return F.conv2d(x, self.binary_weight(), self.bias, self.stride, self.padding, self.dilation, self.groups)
