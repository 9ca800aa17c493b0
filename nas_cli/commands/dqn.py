"""``nas-cli dqn``: train a DQN-family agent on a Gymnasium environment, or evaluate a saved one."""

from __future__ import annotations

from hydra.utils import instantiate
from omegaconf import DictConfig

from nas_cli.agents.dqn import HEADLINE, train
from nas_cli.agents.loop import evaluate_saved, start

COMMAND = "dqn"
EVAL_HEADLINE = ["eval_return_mean", "eval_return_std", "episodes"]


def task(cfg: DictConfig) -> dict:
    opts, agent, env = start(cfg)
    if cfg.mode == "eval":
        episodes, epsilon = int(cfg.eval.episodes), float(cfg.eval.epsilon)
        return evaluate_saved(
            COMMAND,
            opts,
            env,
            cfg.source,
            lambda path: agent.load_player(path, env, opts.device, episodes, epsilon),
            EVAL_HEADLINE,
            epsilon=epsilon,
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
        schedule=instantiate(cfg.sched),
        progress=opts.progress,
        eval_epsilon=float(cfg.eval.epsilon),
    )
