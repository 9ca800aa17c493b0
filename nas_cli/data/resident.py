"""Keeping in-memory data on the training device (``data.on_device``).

A CIFAR-sized set is ~150 MB as uint8: held on the GPU, each batch is one gather there and
its augmentation a few batched kernels, where host data costs a host gather, host-side
augmentation and a copy per batch (0.60 of the GPU-resident speed for a CIFAR ResNet-18 on an
H100 with host flip + crop). ``auto`` holds it there when it fits easily; on a CPU it changes
nothing (the data is already where the model is).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

import torch

from nas_cli.errors import UserError

log = logging.getLogger(__name__)

# ``auto`` places the data when it takes under this share of the GPU's free memory: the rest is
# left to the model's weights, activations and the allocator's cache
AUTO_SHARE = 0.25


def free_bytes(device: torch.device) -> int:
    """Free memory on a CUDA ``device`` now (what the driver reports, the caching allocator's reserve excluded)."""
    return torch.cuda.mem_get_info(device)[0]


def place_loaders(loaders: Iterable, device: torch.device | str) -> list:
    """Place the loaders whose ``on_device`` asks for it on ``device``; returns those placed now.

    ``true``: always (a UserError when the data cannot fit in the GPU's free memory);
    ``auto``: on a CUDA device, when all ``auto`` loaders together take under ``AUTO_SHARE`` of
    its free memory (all or none: split data would leave evaluation on the host); ``false``, and
    ``auto`` on a CPU: never (the data stays on the host). Loaders without ``place`` (``DataLoader``) and
    loaders already on ``device`` are left as they are, so placing twice is harmless.
    """
    device = torch.device(device)
    todo, seen = [], set()
    for loader in loaders:
        if loader is None or not hasattr(loader, "place") or id(loader) in seen:
            continue
        seen.add(id(loader))
        if loader.device is not None and _same(loader.device, device):
            continue
        todo.append(loader)
    wanted = [ld for ld in todo if ld.on_device == "true"]
    auto = [ld for ld in todo if ld.on_device == "auto"]
    if device.type == "cuda" and wanted + auto:
        free = free_bytes(device)
        need = sum(ld.nbytes for ld in wanted)
        if need > free:
            raise UserError(
                f"data.on_device=true: the data takes {need / 2**30:.2f} GiB but {device} has "
                f"{free / 2**30:.2f} GiB free; use data.on_device=auto or false"
            )
        extra = sum(ld.nbytes for ld in auto)
        if auto and extra < AUTO_SHARE * (free - need):
            wanted += auto
        elif auto:
            log.info(
                f"data.on_device=auto: {extra / 2**20:.0f} MiB of data is over {AUTO_SHARE:.0%} of the "
                f"{(free - need) / 2**20:.0f} MiB free on {device}: kept on the host"
            )
    for loader in wanted:
        loader.place(device)
    if wanted and device.type != "cpu":
        log.info(
            f"data held on {device}: {sum(ld.nbytes for ld in wanted) / 2**20:.1f} MiB "
            f"({len(wanted)} loader(s)); batches and augmentation made there"
        )
    return wanted


def _same(a: torch.device, b: torch.device) -> bool:
    """Same device, ``cuda`` meaning the current CUDA device."""
    if a.type != b.type:
        return False
    if a.type != "cuda":
        return True
    current = torch.cuda.current_device()
    return (a.index if a.index is not None else current) == (b.index if b.index is not None else current)
