"""A config node as plain Python values, typed: OmegaConf's ``to_container`` returns a union of every
shape a node can take, and each caller knows which one it holds."""

from __future__ import annotations

from typing import Any, cast

from omegaconf import OmegaConf


def as_dict(node: Any, resolve: bool = True) -> dict[str, Any]:
    """A mapping node (or an already plain mapping) as a ``dict``, interpolations resolved unless told not to."""
    value = OmegaConf.to_container(node, resolve=resolve) if OmegaConf.is_config(node) else node
    if not isinstance(value, dict):
        raise TypeError(f"expected a mapping, got {type(value).__name__}")
    # config keys are strings here: OmegaConf allows other key types, but no config of this project uses them
    return cast("dict[str, Any]", value)


def as_list(node: Any, resolve: bool = True) -> list[Any]:
    """A sequence node (or an already plain sequence) as a ``list``."""
    value = OmegaConf.to_container(node, resolve=resolve) if OmegaConf.is_config(node) else node
    if not isinstance(value, (list, tuple)):
        raise TypeError(f"expected a sequence, got {type(value).__name__}")
    return list(value)
