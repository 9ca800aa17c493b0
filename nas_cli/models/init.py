"""Weight initialisation schemes, applied at the end of every model's constructor (``model.init``)."""

from __future__ import annotations

from torch import nn

from nas_cli.errors import UserError

SCHEMES = ("default", "kaiming", "xavier", "orthogonal")


def initialize(model: nn.Module, scheme: str = "default") -> nn.Module:
    """Re-initialise the Conv/Linear weights of ``model`` in place; biases become 0, BatchNorm 1 and 0.

    ``default`` keeps PyTorch's own initialisation (and draws no random numbers).
    """
    if scheme not in SCHEMES:
        raise UserError(f"model.init={scheme} is not one of {', '.join(SCHEMES)}")
    if scheme == "default":
        return model
    for m in model.modules():
        if isinstance(m, (nn.modules.conv._ConvNd, nn.Linear)):
            if scheme == "kaiming":
                # fan_out for convs (He et al.'s choice for ResNets): keeps backward variance
                mode = "fan_in" if isinstance(m, nn.Linear) else "fan_out"
                nn.init.kaiming_normal_(m.weight, mode=mode, nonlinearity="relu")
            elif scheme == "xavier":
                nn.init.xavier_uniform_(m.weight)
            else:
                nn.init.orthogonal_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.modules.batchnorm._BatchNorm) and m.affine:
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
    return model
