"""``model=rl_child``: retrain an architecture found by ``nas-cli search-rl`` (``model.arch=PATH``)."""

from __future__ import annotations

from omegaconf import Container, OmegaConf

from nas_cli.models.arch import ArchNet, load_arch


class RLChild(ArchNet):
    """The child network of a search's ``best_arch.json`` (or an inline list of layers)."""

    def __init__(self, in_shape, num_classes: int, arch=None):
        super().__init__(load_arch(_plain(arch)), in_shape, num_classes)

    @staticmethod
    def check_config(model) -> None:
        """``model.arch`` read and checked from the config alone: before a run or its data exist."""
        load_arch(_plain(model.get("arch")))


def _plain(arch):
    return OmegaConf.to_container(arch, resolve=True) if isinstance(arch, Container) else arch
