"""Weight initialisation schemes, applied at the end of every model's constructor (``model.init``).

``zeros`` and ``constant`` are there to be studied, not used: every unit of a layer starts with the same
weights, so every unit computes the same function and gets the same gradient, and training never tells them
apart (the symmetry is never broken; ``experiment=init_study`` measures it). ``zeros`` also stops the
gradient of every hidden layer (a ReLU of 0 passes none), so only the classifier's bias learns.
"""

from __future__ import annotations

from typing import Literal

from torch import nn

from nas_cli.errors import UserError

SCHEMES = ("default", "kaiming", "xavier", "orthogonal", "zeros", "constant")


def initialize(model: nn.Module, scheme: str = "default") -> nn.Module:
    """Re-initialise the Conv/Linear weights of ``model`` in place; biases become 0, BatchNorm 1 and 0.

    ``default`` keeps PyTorch's own initialisation (and draws no random numbers). ``constant`` sets every
    weight of a layer to ``1 / fan_in`` (each unit starts as the mean of its inputs: a scale that neither
    vanishes nor grows with depth), ``zeros`` to 0.
    """
    if scheme not in SCHEMES:
        raise UserError(f"model.init={scheme} is not one of {', '.join(SCHEMES)}")
    if scheme == "default":
        return model
    for m in model.modules():
        if isinstance(m, (nn.modules.conv._ConvNd, nn.Linear)):
            _init_weight(m, scheme)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.modules.batchnorm._BatchNorm) and m.affine:
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
    return model


def _init_weight(m: nn.modules.conv._ConvNd | nn.Linear, scheme: str) -> None:
    if scheme == "kaiming":
        # fan_out for convs (He et al.'s choice for ResNets): keeps backward variance
        mode: Literal["fan_in", "fan_out"] = "fan_in" if isinstance(m, nn.Linear) else "fan_out"
        nn.init.kaiming_normal_(m.weight, mode=mode, nonlinearity="relu")
    elif scheme == "xavier":
        nn.init.xavier_uniform_(m.weight)
    elif scheme == "orthogonal":
        nn.init.orthogonal_(m.weight)
    elif scheme == "zeros":
        nn.init.zeros_(m.weight)
    else:  # constant
        nn.init.constant_(m.weight, 1.0 / (m.weight[0].numel()))
