"""``nas-cli pg``: train a policy-gradient agent (REINFORCE or A2C) on a Gymnasium environment, or evaluate one."""

from __future__ import annotations

import logging

from hydra.utils import instantiate
from omegaconf import DictConfig

from nas_cli.agents.envs import EnvSpec
from nas_cli.agents.pg import HEADLINE, PolicyGradient, evaluate, train
from nas_cli.agents.plots import returns_plot
from nas_cli.agents.runs import load_weights, play_saved, source_file, start
from nas_cli.runs import checkpoint
from nas_cli.runs.files import METRICS, RETURNS_PLOT
from nas_cli.runs.options import RunOptions

log = logging.getLogger(__name__)
COMMAND = "pg"
EVAL_HEADLINE = ["eval_return_mean", "eval_return_sampled_mean", "episodes"]


def task(cfg: DictConfig) -> dict:
    opts, agent, env = start(cfg)
    if cfg.mode == "eval":
        return evaluate_saved(agent, env, opts, source=cfg.source, episodes=int(cfg.eval.episodes))
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
        progress=opts.progress,
    )
    returns_plot(run.dir / METRICS, run.dir / RETURNS_PLOT, summary["threshold"])
    log.info(
        f"best greedy evaluation {summary['best_eval_return']} at step {summary['best_eval_step']}; "
        f"solved at step {summary['solved_step']}; {summary['steps_per_s']:.0f} steps/s"
    )
    return summary


def evaluate_saved(agent: PolicyGradient, env: EnvSpec, opts: RunOptions, source: str | None, episodes: int) -> dict:
    """Returns of a saved agent over ``episodes`` games, most-likely and sampled actions, as a run of its own."""
    path = source_file(source)
    envs = env.make(num_envs=1, asynchronous=False)
    agent.build(envs.single_observation_space, envs.single_action_space, opts.device)
    envs.close()
    load_weights(agent.net, checkpoint.load(path, map_location=opts.device), "net", path)

    def play(seed: int) -> dict:
        greedy, sampled = evaluate(agent, env, episodes, seed)
        return {"eval_return": greedy, "eval_return_sampled": sampled}

    summary = play_saved(COMMAND, opts, env, path, play, EVAL_HEADLINE)
    log.info(
        f"{summary['episodes']} episodes of {path}: return {summary['eval_return_mean']:.1f} ± "
        f"{summary['eval_return_std']:.1f} with the most likely action, {summary['eval_return_sampled_mean']:.1f} ± "
        f"{summary['eval_return_sampled_std']:.1f} sampled"
    )
    return summary
