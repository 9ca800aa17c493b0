"""``nas-cli dqn``: train a DQN-family agent on a Gymnasium environment, or evaluate a saved one."""

from __future__ import annotations

import logging

from hydra.utils import instantiate
from omegaconf import DictConfig

from nas_cli.agents.dqn import DQN, HEADLINE, train
from nas_cli.agents.envs import EnvSpec, greedy_returns
from nas_cli.agents.plots import returns_plot
from nas_cli.agents.runs import load_weights, play_saved, source_file, start
from nas_cli.runs import checkpoint
from nas_cli.runs.files import METRICS, RETURNS_PLOT
from nas_cli.runs.options import RunOptions

log = logging.getLogger(__name__)
COMMAND = "dqn"
EVAL_HEADLINE = ["eval_return_mean", "eval_return_std", "episodes"]


def task(cfg: DictConfig) -> dict:
    opts, agent, env = start(cfg)
    if cfg.mode == "eval":
        return evaluate_saved(
            agent, env, opts, source=cfg.source, episodes=int(cfg.eval.episodes), epsilon=float(cfg.eval.epsilon)
        )
    total_steps = int(cfg.total_steps)
    run = opts.run(COMMAND, budget={"total_steps": total_steps}, headline=HEADLINE)
    summary = train(
        agent,
        env,
        run,
        total_steps=total_steps,
        eval_every=int(cfg.eval.every),
        eval_episodes=int(cfg.eval.episodes),
        log_every=int(cfg.log_every),
        optimizer=instantiate(cfg.optim),
        schedule=instantiate(cfg.sched),
        progress=opts.progress,
        eval_epsilon=float(cfg.eval.epsilon),
    )
    returns_plot(run.dir / METRICS, run.dir / RETURNS_PLOT, summary["threshold"])
    log.info(
        f"best greedy evaluation {summary['best_eval_return']} at step {summary['best_eval_step']}; "
        f"solved at step {summary['solved_step']}; {summary['steps_per_s']:.0f} steps/s"
    )
    return summary


def evaluate_saved(
    agent: DQN, env: EnvSpec, opts: RunOptions, source: str | None, episodes: int, epsilon: float = 0.0
) -> dict:
    """Greedy (``epsilon``-greedy) returns of a saved agent over ``episodes`` games, as a run of its own."""
    path = source_file(source)
    envs = env.make(num_envs=1, asynchronous=False)
    agent.build(envs.single_observation_space.shape, int(envs.single_action_space.n), opts.device)
    envs.close()
    load_weights(agent.q, checkpoint.load(path, map_location=opts.device), "q", path)

    def play(seed: int) -> dict:
        return {"eval_return": greedy_returns(agent.q.eval(), env, episodes, seed, opts.device, epsilon)}

    summary = play_saved(COMMAND, opts, env, path, play, EVAL_HEADLINE, epsilon=epsilon)
    log.info(
        f"{summary['episodes']} greedy episodes of {path}: return {summary['eval_return_mean']:.1f} ± "
        f"{summary['eval_return_std']:.1f} (min {summary['eval_return_min']:.0f}, max {summary['eval_return_max']:.0f})"
    )
    return summary
