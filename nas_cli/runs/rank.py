"""This process's place under torchrun, read from the environment torchrun sets (no torch import needed)."""

from __future__ import annotations

import os


def launched_rank() -> int:
    """This process's rank as torchrun set it (0 outside torchrun)."""
    return int(os.environ.get("RANK", "0"))
