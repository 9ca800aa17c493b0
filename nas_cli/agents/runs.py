"""What the agent commands (dqn, pg, ga) share around their runs: the start (run options, seeding,
the agent, the environment, the mode), the divergence check of their loops and, for ``mode=eval``, the
saved agent's file, its weights and the figures of its returns."""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torch import nn

from nas_cli.agents.envs import EnvSpec
from nas_cli.engine.device import seed_everything
from nas_cli.errors import UserError
from nas_cli.runs.files import BEST, EVAL_RETURNS
from nas_cli.runs.lifecycle import Run
from nas_cli.runs.options import RunOptions

log = logging.getLogger(__name__)


def start(cfg: DictConfig):
    """``(opts, agent, env)`` of an agent command's config, seeded; ``mode`` must be train or eval."""
    if cfg.mode not in ("train", "eval"):
        raise UserError(f"mode={cfg.mode}: use train or eval")
    opts = RunOptions.from_config(cfg)
    seed_everything(opts.seed)
    return opts, instantiate(cfg.agent), EnvSpec(**OmegaConf.to_container(cfg.env, resolve=True))


def diverged(
    run: Run, where: str, figures: dict[str, float | None], weights: Iterable[torch.Tensor] | None = None
) -> bool:
    """True, with the run marked ``diverged``, when a measured figure (a loss, a return; None: not measured
    this time) or one of ``weights`` is NaN or infinite. The loop then logs its row and stops there, keeping
    its rows and its last finite checkpoint, as the training engine does with a non-finite loss.

    ``weights``: where an evaluation follows, since an update can blow the weights up after the last finite
    loss, and greedy play of such weights must not become ``best.pt``.
    """
    bad = [f"{name} {value}" for name, value in figures.items() if value is not None and not math.isfinite(value)]
    tensors = [w.detach() for w in weights or ()]
    if tensors and not bool(torch.stack([torch.isfinite(w).all() for w in tensors]).all()):  # one host sync
        bad.append("non-finite weights")
    if not bad:
        return False
    run.status = "diverged"
    log.warning(f"{', '.join(bad)} at {where}: run diverged, stopping")
    return True


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
    return {
        f"{prefix}_mean": float(returns.mean()),
        f"{prefix}_std": float(returns.std(ddof=1)) if len(returns) > 1 else 0.0,
        f"{prefix}_min": float(returns.min()),
        f"{prefix}_max": float(returns.max()),
    }


def play_saved(command: str, opts: RunOptions, env: EnvSpec, path: Path, play, headline: list[str], **figures) -> dict:
    """``mode=eval``: a saved agent's returns as a run of its own. ``play(seed)`` plays the episodes and gives each
    kind of return (``{"eval_return": ..., "eval_return_sampled": ...}``); ``returns.txt`` holds them, one column
    a kind, and the summary their statistics. Evaluation seeds sit apart from training's."""
    run = opts.run(command, headline=headline)
    with run:
        found = {name: np.asarray(r, dtype=float) for name, r in play(opts.seed + 20_000).items()}
        names = [name.removeprefix("eval_return").lstrip("_") or "return" for name in found]
        header = " ".join(names) if len(found) > 1 else ""
        np.savetxt(run.dir / EVAL_RETURNS, np.stack(list(found.values()), 1), header=header, fmt="%.10g")
        first = next(iter(found.values()))
        stats = {k: v for name, r in found.items() for k, v in return_stats(name, r).items()}
        run.figures = lambda: {
            "mode": "eval",
            "source": str(path),
            "env": env.id,
            "episodes": len(first),
            **figures,
            **stats,
        }
    return run.summary
