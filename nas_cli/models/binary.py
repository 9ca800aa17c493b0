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


def center_clamp(w: torch.Tensor) -> torch.Tensor:
    """XNOR-Net's reference projection of latent conv weights: subtract the mean over the
    input-channel dim (dim 1, one mean per output filter and kernel position), then clamp to [-1, 1]."""
    return (w - w.mean(dim=1, keepdim=True)).clamp(-1.0, 1.0)


class XNORConv2d(nn.Conv2d):
    """A convolution with weights ``sign(W) * alpha``, ``alpha`` = mean |W| per output channel (XNOR-Net).

    Backward: the clipped identity through sign (gradient where |W| <= 1), plus the
    gradient through alpha, which autograd handles since alpha is computed from W.

    ``clamp_weights=True`` follows the reference code (jiecaoyu/XNOR-Net-PyTorch, BinOp; the
    paper is silent on it): before binarising, the latent weights are centred over the input
    channels and clamped to [-1, 1] (``center_clamp``). As there, this is a projection of the
    stored weights, done once per weight update at the first training forward after it, so the
    optimizer steps from the projected weights and they stay inside the STE's window (a clamp
    inside the graph instead would zero the gradient of every clamped weight for good). In eval
    mode the projection is applied to a copy: the same output, no side effect. The reference
    also scales the weight gradient by n (1 - 1/c_in); that is a learning-rate factor and is
    left out here.
    """

    def __init__(self, *args, clamp_weights: bool = False, **kwargs):
        super().__init__(*args, **kwargs)
        self.clamp_weights = bool(clamp_weights)
        self._projected_version = -1  # the weight's version counter right after our last projection

    def latent_weight(self) -> torch.Tensor:
        """The real-valued weights that get binarised (projected first when ``clamp_weights``)."""
        if not self.clamp_weights:
            return self.weight
        if not self.training:
            return center_clamp(self.weight)
        # Project in place once per update: an optimizer step or load bumps the version counter.
        # Skipping when nothing changed keeps a second forward before backward from modifying a
        # tensor the first forward's graph saved.
        if self.weight._version != self._projected_version:
            with torch.no_grad():
                self.weight.copy_(center_clamp(self.weight))
            self._projected_version = self.weight._version
        return self.weight

    def binary_weight(self) -> torch.Tensor:
        w = self.latent_weight()
        alpha = w.abs().mean(dim=tuple(range(1, w.dim())), keepdim=True)
        return binary_sign(w, "clipped") * alpha

    def activation_scale(self, a: torch.Tensor) -> torch.Tensor:
        """XNOR-Net's K (Sec. 3.2) for the real-valued input ``a`` of the sign: A = mean_c |a|,
        convolved with a kh x kw box filter of 1/(kh kw) at this conv's stride, padding and
        dilation (zero padding counts in the mean), so K has the conv output's spatial shape."""
        mean_abs = a.abs().mean(dim=1, keepdim=True)
        kh, kw = self.kernel_size
        box = mean_abs.new_full((1, 1, kh, kw), 1.0 / (kh * kw))
        return F.conv2d(mean_abs, box, None, self.stride, self.padding, self.dilation)

    def forward(self, x):
        return F.conv2d(x, self.binary_weight(), self.bias, self.stride, self.padding, self.dilation, self.groups)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, clamp_weights={self.clamp_weights}"
