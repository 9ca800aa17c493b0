"""The architecture description shared by every controller (``nas_cli.models.arch``: the description, its
checks and the child network it builds, which ``model=rl_child`` retrains), and its size for the search."""

from __future__ import annotations

from nas_cli.engine.latency import n_params
from nas_cli.models.arch import (
    SIZES,
    TYPES,
    ArchNet,
    canonical,
    check_layers,
    describe,
    key,
    load_arch,
    pool_size,
)

__all__ = [
    "SIZES",
    "TYPES",
    "ArchNet",
    "canonical",
    "check_layers",
    "describe",
    "key",
    "load_arch",
    "param_count",
    "pool_size",
]


def param_count(arch: list[dict], in_shape, num_classes: int) -> int:
    return n_params(ArchNet(arch, in_shape, num_classes))
