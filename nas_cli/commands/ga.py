"""``nas-cli ga``: evolve MLP policy weights with a genetic algorithm (deep neuroevolution, Such et al. 2017)
on a Gymnasium environment, or evaluate a saved individual."""

from __future__ import annotations

from omegaconf import DictConfig

from nas_cli.agents.ga import HEADLINE, train
from nas_cli.agents.loop import evaluate_saved, start
from nas_cli.errors import UserError

COMMAND = "ga"
EVAL_HEADLINE = ["eval_return_mean", "eval_return_std", "episodes"]


def task(cfg: DictConfig) -> dict:
    opts, ga, env = start(cfg)
    if cfg.mode == "eval":
        episodes = int(cfg.eval.episodes)
        return evaluate_saved(
            COMMAND, opts, env, cfg.source, lambda path: ga.load_player(path, env, opts.device, episodes), EVAL_HEADLINE
        )
    generations = int(cfg.generations)
    if generations < 1:
        raise UserError(f"generations={generations}: use 1 or more")
    run = opts.run(COMMAND, budget={"generations": generations}, headline=HEADLINE)
    return train(ga, env, run, generations=generations, workers=int(cfg.workers), progress=opts.progress)
