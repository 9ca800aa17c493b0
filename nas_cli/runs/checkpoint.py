"""The run folder's checkpoint file format: written atomically, read back with ``weights_only=True``."""

from __future__ import annotations

from pathlib import Path

import torch

from nas_cli.errors import UserError
from nas_cli.runs.record import atomic_write

FORMAT = "nas-cli/checkpoint/1"


def save(path: str | Path, state: dict) -> None:
    atomic_write(Path(path), lambda tmp: torch.save({"format": FORMAT, **state}, tmp))


def load(path: str | Path, map_location="cpu") -> dict:
    """Read a checkpoint; a missing, damaged or foreign file is a one-line ``UserError``."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint not found: {path}")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as ex:  # torch raises many types for a damaged file
        raise UserError(
            f"cannot read checkpoint {path}: the file is damaged or not a checkpoint ({type(ex).__name__})"
        ) from ex
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise UserError(f"{path} is not a nas-cli checkpoint (no '{FORMAT}' marker)")
    return state
