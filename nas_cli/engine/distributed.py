"""Multi-process training under ``torchrun``: process group, sharding helpers, reductions.

Launched by ``torchrun --nproc_per_node=N -m nas_cli train ...`` (or the ``nas-cli``
entry point under torchrun), every process runs the same task; rank 0 alone writes
the run record and checkpoints. CUDA uses NCCL, the CPU gloo (what CI tests).
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist


class Dist:
    """This process's place in the group (a plain class: Hydra would turn a dataclass argument into a config)."""

    def __init__(self, rank: int = 0, world: int = 1, local_rank: int = 0):
        self.rank, self.world, self.local_rank = rank, world, local_rank

    @property
    def enabled(self) -> bool:
        return self.world > 1

    @property
    def main(self) -> bool:
        return self.rank == 0


def setup(device: torch.device) -> Dist:
    """Join the process group torchrun prepared (a no-op in a plain run)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist()
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return Dist(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))


def all_reduce_sum(values: list[float], device: torch.device) -> list[float]:
    """Sum each value over all processes (identity in a plain run)."""
    if not (dist.is_available() and dist.is_initialized()):
        return values
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.tolist()


def gather(value) -> list:
    """Every process's ``value``, in rank order (``[value]`` in a plain run)."""
    if not (dist.is_available() and dist.is_initialized()):
        return [value]
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, value)
    return out


def broadcast(value, src: int = 0):
    """Rank ``src``'s value on every process (identity in a plain run)."""
    if not (dist.is_available() and dist.is_initialized()):
        return value
    box = [value]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def teardown() -> None:
    if dist.is_available() and dist.is_initialized():
        try:
            dist.barrier()  # every process leaves together: none tears the group down under another's feet
        finally:
            dist.destroy_process_group()
