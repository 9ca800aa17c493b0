"""OmegaConf resolvers for arithmetic between config values, registered on import of ``nas_cli``.

Hydra sweeps take the cartesian product of the values given, so a value that must follow another one
(the learning rate scaled with the batch size, Goyal et al. 2017's linear scaling rule) cannot be swept
beside it; an interpolation computes it instead, per job::

    optim:
      lr: ${mul:${lr_scaling.base_lr},${div:${data.batch_size},${lr_scaling.base_batch}}}

``${mul:a,b,...}`` is the product of its arguments, ``${div:a,b}`` is ``a / b`` (always a float).
"""

from __future__ import annotations

import math

from omegaconf import OmegaConf


def mul(*values: float) -> float:
    """The product of the values (an int when every value is one)."""
    return math.prod(values)


def div(numerator: float, denominator: float) -> float:
    return numerator / denominator


def register() -> None:
    """Register ``mul`` and ``div`` (again: harmless, the same functions)."""
    for name, fn in (("mul", mul), ("div", div)):
        OmegaConf.register_new_resolver(name, fn, replace=True)


register()
