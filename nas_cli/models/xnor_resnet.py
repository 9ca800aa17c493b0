"""XNOR-ResNet-18: binary weights and activations inside every residual block.

XNOR-Net conventions: the first conv and the last linear stay full precision;
each binary conv is preceded by BatchNorm and a sign activation, so the conv sees
binary inputs and uses binary weights ``sign(W) * alpha``. The shortcut
projections stay full precision (they are a small share of the compute).
Parameter names follow ``resnet18`` so a full-precision run can be fine-tuned with
``init_from=`` (the BatchNorms that moved before the convs are listed as reshaped
where their width differs).
"""

from __future__ import annotations

from torch import nn

from nas_cli.models.binary import BinaryActivation, XNORConv2d
from nas_cli.models.init import initialize


class XNORBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, activation: dict):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(cin)
        self.conv1 = XNORConv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.conv2 = XNORConv2d(cout, cout, 3, padding=1, bias=False)
        self.act = BinaryActivation(**activation)
        self.shortcut = nn.Identity()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        out = self.conv1(self.act(self.bn1(x)))
        out = self.conv2(self.act(self.bn2(out)))
        return out + self.shortcut(x)


class XNORResNet(nn.Module):
    """Full-precision stem -> 4 stages of 2 binary blocks -> BatchNorm, ReLU, pooling -> full-precision linear."""

    def __init__(self, in_shape, num_classes: int, width: int = 64, ste: str = "clipped", k: float = 2.0,
                 beta: float = 5.0, blocks=(2, 2, 2, 2), init: str = "default"):
        super().__init__()
        if len(in_shape) != 3 or min(in_shape[1:]) < 8:
            raise ValueError(f"XNOR-ResNet needs images of at least 8x8, got input shape {tuple(in_shape)}")
        activation = {"ste": ste, "k": k, "beta": beta}
        BinaryActivation(**activation)  # validate the STE name before building anything
        self.stem = nn.Sequential(nn.Conv2d(in_shape[0], width, 3, padding=1, bias=False), nn.BatchNorm2d(width),
                                  nn.ReLU(inplace=True))
        stages, cin = [], width
        for i, n in enumerate(blocks):
            cout = width * 2**i
            stages.append(nn.Sequential(*[XNORBlock(cin if j == 0 else cout, cout, 1 if i == 0 or j else 2,
                                                    activation) for j in range(n)]))
            cin = cout
        self.stages = nn.Sequential(*stages)
        self.post = nn.Sequential(nn.BatchNorm2d(cin), nn.ReLU(inplace=True))
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(cin, num_classes))
        initialize(self, init)

    def forward(self, x):
        return self.head(self.post(self.stages(self.stem(x))))


def xnor_resnet18(in_shape, num_classes: int, width: int = 64, ste: str = "clipped", k: float = 2.0,
                  beta: float = 5.0, init: str = "default") -> XNORResNet:
    return XNORResNet(in_shape, num_classes, width, ste, k, beta, (2, 2, 2, 2), init)
