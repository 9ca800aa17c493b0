"""``nas-cli ga``: evolve MLP policy weights with a genetic algorithm (deep neuroevolution, Such et al. 2017)
on a Gymnasium environment, or evaluate a saved individual."""

from __future__ import annotations

import logging

from omegaconf import DictConfig

from nas_cli.agents.envs import EnvSpec, greedy_returns
from nas_cli.agents.ga import GA, HEADLINE, train
from nas_cli.agents.population import PolicyLayout, check_env
from nas_cli.agents.runs import load_weights, play_saved, source_file, start
from nas_cli.errors import UserError
from nas_cli.runs import checkpoint
from nas_cli.runs.options import RunOptions

log = logging.getLogger(__name__)
COMMAND = "ga"
EVAL_HEADLINE = ["eval_return_mean", "eval_return_std", "episodes"]


def task(cfg: DictConfig) -> dict:
    opts, ga, env = start(cfg)
    if cfg.mode == "eval":
        return evaluate_saved(ga, env, opts, source=cfg.source, episodes=int(cfg.eval.episodes))
    generations = int(cfg.generations)
    if generations < 1:
        raise UserError(f"generations={generations}: use 1 or more")
    run = opts.run(COMMAND, budget={"generations": generations}, headline=HEADLINE)
    summary = train(ga, env, run, generations=generations, workers=int(cfg.workers), progress=opts.progress)
    log.info(
        f"best elite {summary.get('best_eval_return')} at generation {summary.get('best_generation')}; "
        f"solved at generation {summary.get('solved_generation')} ({summary.get('solved_steps')} steps)"
    )
    return summary


def evaluate_saved(ga: GA, env: EnvSpec, opts: RunOptions, source: str | None, episodes: int) -> dict:
    """Greedy returns of a saved individual (a run's ``best.pt``) over ``episodes`` games, as a run of its own."""
    path = source_file(source)
    state = checkpoint.load(path, map_location="cpu")
    net = PolicyLayout(*check_env(env), state.get("hidden", ga.hidden)).network()
    load_weights(net, state, "model", path)
    net = net.to(opts.device).eval()
    summary = play_saved(
        COMMAND,
        opts,
        env,
        path,
        lambda seed: {"eval_return": greedy_returns(net, env, episodes, seed, opts.device)},
        EVAL_HEADLINE,
    )
    log.info(
        f"{summary['episodes']} greedy episodes of {path}: return {summary['eval_return_mean']:.1f} "
        f"(min {summary['eval_return_min']:.0f}, max {summary['eval_return_max']:.0f})"
    )
    return summary
