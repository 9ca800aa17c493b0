"""What the agents' loops (dqn, pg, ga) share: the start of their commands (run options, seeding, the agent,
the environment, the mode), the divergence check, what follows an evaluation (``best.pt``, the step that
solved the environment), the throttled metrics rows and, for ``mode=eval``, a saved agent played as a run
of its own (``evaluate_saved``)."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig
from torch import nn

from nas_cli.agents.envs import EnvSpec
from nas_cli.agents.plots import returns_plot
from nas_cli.config_values import as_dict
from nas_cli.engine.device import seed_everything
from nas_cli.errors import UserError
from nas_cli.runs import checkpoint
from nas_cli.runs.files import BEST, EVAL_RETURNS, METRICS, RETURNS_PLOT
from nas_cli.runs.lifecycle import Run
from nas_cli.runs.options import RunOptions

log = logging.getLogger(__name__)


def start(cfg: DictConfig):
    """``(opts, agent, env)`` of an agent command's config, seeded; ``mode`` must be train or eval."""
    if cfg.mode not in ("train", "eval"):
        raise UserError(f"mode={cfg.mode}: use train or eval")
    opts = RunOptions.from_config(cfg)
    seed_everything(opts.seed)
    return opts, instantiate(cfg.agent), EnvSpec(**as_dict(cfg.env))


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


def after_evaluation(
    run: Run, loop, step: int, scores: dict[str, float], net: nn.Module, threshold: float | None
) -> bool:
    """What follows an evaluation at ``step``: True (the run marked ``diverged``) when a score is not finite;
    otherwise the first score (greedy play) makes ``best.pt`` of ``net`` when it beats ``loop.best_eval``,
    and each score that reaches ``threshold`` first sets its solved step: ``eval_return`` sets
    ``loop.solved_step``, ``eval_return_sampled`` sets ``loop.solved_step_sampled``."""
    if diverged(run, f"step {step}", dict(scores)):
        return True
    score = next(iter(scores.values()))
    if score > loop.best_eval:
        loop.best_eval, loop.best_step = score, step
        checkpoint.save(run.dir / BEST, {"model": net.state_dict()})
    for name, value in scores.items():
        solved = "solved_step" + name.removeprefix("eval_return")
        if threshold is not None and getattr(loop, solved) is None and value >= threshold:
            setattr(loop, solved, step)
    return False


def finished(run: Run) -> dict:
    """The end of a dqn or pg run: its returns plot and one log line of what it reached; returns the summary."""
    summary = run.summary
    assert summary is not None  # leaving ``with run`` has written it
    returns_plot(run.dir / METRICS, run.dir / RETURNS_PLOT, summary["threshold"])
    log.info(
        f"best greedy evaluation {summary['best_eval_return']} at step {summary['best_eval_step']}; "
        f"solved at step {summary['solved_step']}; {summary['steps_per_s']:.0f} steps/s"
    )
    return summary


class Rows:
    """An agent loop's metrics rows: each gets ``steps_per_s`` since the row before, and the table is
    rewritten whole (atomically) at evaluations and at most every ``every_s`` seconds, not at every row."""

    def __init__(self, run: Run, loop, every_s: float = 10.0):
        self.run, self.loop, self.every_s = run, loop, every_s
        self.tick = self.last_write = time.perf_counter()

    def log(self, row: dict, evaluated: bool) -> dict:
        now = time.perf_counter()
        step = row["step"]
        row["steps_per_s"] = (step - self.loop.last_logged) / max(now - self.tick, 1e-9)
        write = evaluated or now - self.last_write > self.every_s
        self.run.record.log(row, write=write)
        self.last_write = now if write else self.last_write
        self.tick, self.loop.last_logged = now, step
        return row


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


def evaluate_saved(
    command: str,
    opts: RunOptions,
    env: EnvSpec,
    source: str | None,
    player: Callable[[Path], Callable[[int], dict]],
    headline: list[str],
    **figures,
) -> dict:
    """``mode=eval``: a saved agent's returns as a run of its own. ``source`` is a run folder (its ``best.pt``)
    or a ``.pt`` file; ``player(path)`` loads it and gives ``play(seed)``, which plays the episodes and returns
    each kind of return (``{"eval_return": ..., "eval_return_sampled": ...}``). ``returns.txt`` holds them, one
    column a kind, and the summary their statistics. Evaluation seeds sit apart from training's."""
    path = source_file(source)
    play = player(path)
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
    summary = run.summary
    if summary.get("status") == "ok":
        kinds = ", ".join(
            f"{name.removeprefix('eval_').replace('_', ' ')} {stats[name + '_mean']:.1f} ± {stats[name + '_std']:.1f} "
            f"(min {stats[name + '_min']:.0f}, max {stats[name + '_max']:.0f})"
            for name in found
        )
        log.info(f"{len(first)} episodes of {path}: {kinds}")
    return summary
