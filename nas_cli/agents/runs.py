"""What the agent commands (dqn, pg, ga) share around their runs: the start (run options, seeding,
the agent, the environment, the mode) and, for ``mode=eval``, the saved agent's file, its weights
and the figures of its returns."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torch import nn

from nas_cli.agents.envs import EnvSpec
from nas_cli.engine.device import seed_everything
from nas_cli.errors import UserError
from nas_cli.runs.files import BEST
from nas_cli.runs.options import RunOptions


def start(cfg: DictConfig):
    """``(opts, agent, env)`` of an agent command's config, seeded; ``mode`` must be train or eval."""
    if cfg.mode not in ("train", "eval"):
        raise UserError(f"mode={cfg.mode}: use train or eval")
    opts = RunOptions.from_config(cfg)
    seed_everything(opts.seed)
    return opts, instantiate(cfg.agent), EnvSpec(**OmegaConf.to_container(cfg.env, resolve=True))


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
