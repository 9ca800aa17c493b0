"""``nas-cli dqn``: train a DQN-family agent on a Gymnasium environment, or evaluate a saved one."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import DictConfig

from nas_cli.engine import checkpoint
from nas_cli.engine.device import resolve_device, seed_everything
from nas_cli.engine.resume import checkpoint_to_resume
from nas_cli.errors import UserError
from nas_cli.record import RunRecord, versions
from nas_cli.rl.dqn import BEST, DQN, train
from nas_cli.rl.envs import greedy_returns, make_envs
from nas_cli.rl.plots import returns_plot

log = logging.getLogger(__name__)


def task(cfg: DictConfig) -> dict:
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    torch.set_num_threads(int(cfg.threads))
    device = resolve_device(cfg.device)
    seed_everything(cfg.seed)
    agent: DQN = instantiate(cfg.agent)
    if cfg.mode == "eval":
        return evaluate_saved(cfg, agent, device, run_dir)
    if cfg.mode != "train":
        raise UserError(f"mode={cfg.mode}: use train or eval")
    summary = train(agent, cfg.env, run_dir, total_steps=int(cfg.total_steps), seed=int(cfg.seed), device=device,
                    eval_every=int(cfg.eval.every), eval_episodes=int(cfg.eval.episodes),
                    log_every=int(cfg.log_every), resume_from=checkpoint_to_resume(cfg.resume, run_dir),
                    progress=cfg.progress)
    returns_plot(run_dir / "metrics.csv", run_dir / "returns.png", summary["threshold"])
    log.info(f"best greedy evaluation {summary['best_eval_return']} at step {summary['best_eval_step']}; "
             f"solved at step {summary['solved_step']}; {summary['steps_per_s']:.0f} steps/s")
    return summary


def evaluate_saved(cfg: DictConfig, agent: DQN, device: torch.device, run_dir: Path) -> dict:
    """Greedy returns of a saved agent over ``eval.episodes`` episodes."""
    if not cfg.checkpoint:
        raise UserError("mode=eval needs checkpoint=RUN_FOLDER or checkpoint=FILE.pt")
    path = Path(cfg.checkpoint)
    path = path / BEST if path.is_dir() else path
    envs = make_envs(cfg.env.id, 1, cfg.env.atari)
    agent.build(envs.single_observation_space.shape, int(envs.single_action_space.n), device)
    envs.close()
    state = checkpoint.load(path, map_location=device)
    try:
        agent.q.load_state_dict(state["model"] if "model" in state else state["agent"]["q"])
    except (KeyError, RuntimeError) as ex:
        raise UserError(f"checkpoint={path} does not fit this agent/env config ({type(ex).__name__})") from ex
    returns = greedy_returns(agent.q.eval(), cfg.env.id, int(cfg.eval.episodes), int(cfg.seed) + 20_000,
                             cfg.env.atari, device)
    summary = {"status": "ok", "mode": "eval", "checkpoint": str(path), "env": cfg.env.id,
               "episodes": len(returns), "eval_return_mean": float(returns.mean()),
               "eval_return_std": float(returns.std(ddof=1)) if len(returns) > 1 else 0.0,
               "eval_return_min": float(returns.min()), "eval_return_max": float(returns.max()),
               "seed": cfg.seed, "device": str(device), "versions": versions()}
    RunRecord(run_dir).write_summary(summary)
    np.savetxt(run_dir / "returns.txt", returns)
    log.info(f"{len(returns)} greedy episodes of {path}: return {returns.mean():.1f} ± {summary['eval_return_std']:.1f}"
             f" (min {returns.min():.0f}, max {returns.max():.0f})")
    return summary
