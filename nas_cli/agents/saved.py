"""A saved agent for ``mode=eval`` (dqn, pg, ga): where its weights are, loading them, the returns' figures."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from torch import nn

from nas_cli.errors import UserError
from nas_cli.runs.files import BEST


def source_file(source: str | None) -> Path:
    """``source=``: a run folder (its ``best.pt``) or a ``.pt`` file."""
    if not source:
        raise UserError("mode=eval needs source=RUN_FOLDER or source=FILE.pt")
    path = Path(source)
    return path / BEST if path.is_dir() else path


def load_weights(module: nn.Module, state: dict, agent_key: str, path: Path) -> None:
    """The network's weights from ``best.pt`` (``model``) or from a checkpoint (``agent[agent_key]``)."""
    try:
        module.load_state_dict(state["model"] if "model" in state else state["agent"][agent_key])
    except (KeyError, RuntimeError) as ex:
        raise UserError(f"source={path} does not fit this agent/env config ({type(ex).__name__})") from ex


def return_stats(prefix: str, returns: np.ndarray) -> dict:
    """``<prefix>_mean``, ``_std`` (0 for one episode), ``_min`` and ``_max`` of the episodes' returns."""
    return {f"{prefix}_mean": float(returns.mean()),
            f"{prefix}_std": float(returns.std(ddof=1)) if len(returns) > 1 else 0.0,
            f"{prefix}_min": float(returns.min()), f"{prefix}_max": float(returns.max())}
