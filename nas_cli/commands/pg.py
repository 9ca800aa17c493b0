"""``nas-cli pg``: train a policy-gradient agent (REINFORCE or A2C) on a Gymnasium environment, or evaluate one."""

from __future__ import annotations

from hydra.utils import instantiate
from omegaconf import DictConfig

from nas_cli.agents.loop import evaluate_saved, start
from nas_cli.agents.pg import HEADLINE, train

COMMAND = "pg"
EVAL_HEADLINE = ["eval_return_mean", "eval_return_sampled_mean", "episodes"]


def task(cfg: DictConfig) -> dict:
    opts, agent, env = start(cfg)
    if cfg.mode == "eval":
        episodes = int(cfg.eval.episodes)
        return evaluate_saved(
            COMMAND,
            opts,
            env,
            cfg.source,
            lambda path: agent.load_player(path, env, opts.device, episodes),
            EVAL_HEADLINE,
        )
    total_steps = int(cfg.total_steps)
    run = opts.run(COMMAND, budget={"total_steps": total_steps}, headline=HEADLINE)
    return train(
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
