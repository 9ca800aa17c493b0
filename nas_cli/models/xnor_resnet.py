"""XNOR-ResNet-18: binary weights and activations inside every residual block.

XNOR-Net conventions: the first conv and the last linear stay full precision;
each binary conv is preceded by BatchNorm and a sign activation, so the conv sees
binary inputs and uses binary weights ``sign(W) * alpha``. The shortcut
projections stay full precision (they are a small share of the compute).
Parameter names follow ``resnet18`` so a full-precision run can be fine-tuned with
``init_from=`` (the BatchNorms that moved before the convs are listed as reshaped
where their width differs).

Two options follow the paper and its reference code (jiecaoyu/XNOR-Net-PyTorch), which differ:
* ``act_scale``: multiply each binary conv's output by K, the paper's activation scaling factor
  (Sec. 3.2; ``XNORConv2d.activation_scale``). Off by default: the reference code computes the
  channel mean A but never applies it, and K costs a full-precision convolution per layer.
* ``clamp_weights``: centre the latent weights over the input channels and clamp them to
  [-1, 1] before binarising, as the reference code does (the paper does not mention it). On by
  default: it keeps the latent weights inside the sign STE's window, where they keep learning.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from nas_cli.models.binary import BinaryActivation, XNORConv2d
from nas_cli.models.init import initialize


class XNORBlock(nn.Module):
    def __init__(
        self, cin: int, cout: int, stride: int, activation: dict, act_scale: bool = False, clamp_weights: bool = False
    ):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(cin)
        self.conv1 = XNORConv2d(cin, cout, 3, stride=stride, padding=1, bias=False, clamp_weights=clamp_weights)
        self.bn2 = nn.BatchNorm2d(cout)
        self.conv2 = XNORConv2d(cout, cout, 3, padding=1, bias=False, clamp_weights=clamp_weights)
        self.act = BinaryActivation(**activation)
        self.act_scale = bool(act_scale)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout))

    def binary_conv(self, conv: XNORConv2d, a):
        """sign(a) convolved with binary weights; times K(a) when ``act_scale`` (the conv itself
        only ever sees the binary input, as a bitwise XNOR conv would)."""
        out = conv(self.act(a))
        return out * conv.activation_scale(a) if self.act_scale else out

    def forward(self, x):
        out = self.binary_conv(self.conv1, self.bn1(x))
        out = self.binary_conv(self.conv2, self.bn2(out))
        return out + self.shortcut(x)


class XNORResNet(nn.Module):
    """Full-precision stem -> 4 stages of 2 binary blocks -> BatchNorm, ReLU, pooling -> full-precision linear."""

    def __init__(
        self,
        in_shape,
        num_classes: int,
        width: int = 64,
        ste: str = "clipped",
        k: float = 2.0,
        beta: float = 5.0,
        blocks=(2, 2, 2, 2),
        init: str = "default",
        act_scale: bool = False,
        clamp_weights: bool = True,
    ):
        super().__init__()
        if len(in_shape) != 3 or min(in_shape[1:]) < 8:
            raise ValueError(f"XNOR-ResNet needs images of at least 8x8, got input shape {tuple(in_shape)}")
        activation: dict[str, Any] = {"ste": ste, "k": k, "beta": beta}
        BinaryActivation(**activation)  # validate the STE name before building anything
        self.stem = nn.Sequential(
            nn.Conv2d(in_shape[0], width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU(inplace=True)
        )
        stages, cin = [], width
        for i, n in enumerate(blocks):
            cout = width * 2**i
            stages.append(
                nn.Sequential(
                    *[
                        XNORBlock(
                            cin if j == 0 else cout, cout, 1 if i == 0 or j else 2, activation, act_scale, clamp_weights
                        )
                        for j in range(n)
                    ]
                )
            )
            cin = cout
        self.stages = nn.Sequential(*stages)
        self.post = nn.Sequential(nn.BatchNorm2d(cin), nn.ReLU(inplace=True))
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(cin, num_classes))
        initialize(self, init)

    def forward(self, x):
        return self.head(self.post(self.stages(self.stem(x))))


def xnor_resnet18(
    in_shape,
    num_classes: int,
    width: int = 64,
    ste: str = "clipped",
    k: float = 2.0,
    beta: float = 5.0,
    init: str = "default",
    act_scale: bool = False,
    clamp_weights: bool = True,
) -> XNORResNet:
    return XNORResNet(in_shape, num_classes, width, ste, k, beta, (2, 2, 2, 2), init, act_scale, clamp_weights)
