"""``model=rl_child``: retrain an architecture found by ``nas-cli search-rl`` (``model.arch=PATH``)."""

from __future__ import annotations

from omegaconf import Container, OmegaConf

from nas_cli.nas.arch import ArchNet, load_arch


class RLChild(ArchNet):
    """The child network of a search's ``best_arch.json`` (or an inline list of layers)."""

    def __init__(self, in_shape, num_classes: int, arch=None):
        if isinstance(arch, Container):
            arch = OmegaConf.to_container(arch, resolve=True)
        super().__init__(load_arch(arch), in_shape, num_classes)
