"""DQN variants on CartPole-v1: how soon greedy play is solved, how good best.pt is, how fast.

Runs vanilla, double, dueling-mean and dueling-max with the default config
(conf/dqn.yaml, conf/agent/dqn.yaml) for each seed, two runs at a time (one
thread each), then scores each run's best.pt over 100 greedy episodes.

    python bench/dqn_cartpole.py [--steps 100000] [--seeds 0 1 2] [--jobs 2]
"""

from __future__ import annotations

import argparse
import functools
import statistics
import tempfile
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

VARIANTS = {
    "vanilla": {},
    "double": {"double": True},
    "dueling-mean": {"dueling": True, "aggregation": "mean"},
    "dueling-max": {"dueling": True, "aggregation": "max"},
}


def run(variant: str, seed: int, steps: int, root: str) -> dict:
    import torch
    from omegaconf import OmegaConf

    from nas_cli.agents.dqn import DQN, train
    from nas_cli.agents.envs import EnvSpec, greedy_returns
    from nas_cli.engine.device import seed_everything
    from nas_cli.hydra_bridge import config_dir
    from nas_cli.runs import checkpoint
    from nas_cli.runs.lifecycle import Run

    torch.set_num_threads(1)
    seed_everything(seed)
    conf = config_dir()
    agent_cfg = {
        k: v for k, v in OmegaConf.to_container(OmegaConf.load(conf / "agent" / "dqn.yaml")).items() if k != "_target_"
    }
    cartpole = OmegaConf.load(conf / "env" / "cartpole.yaml")  # the env, its lr and its evaluation (global keys)
    env = EnvSpec(**OmegaConf.to_container(cartpole.env))
    top = OmegaConf.load(conf / "dqn.yaml")
    run_dir = Path(root) / f"{variant}-{seed}"
    agent = DQN(**{**agent_cfg, **VARIANTS[variant]})
    adam = functools.partial(torch.optim.Adam, lr=cartpole.optim.lr)
    result = train(
        agent,
        env,
        Run(run_dir, "dqn", seed=seed, device="cpu"),
        total_steps=steps,
        eval_every=cartpole.eval.every,
        eval_episodes=cartpole.eval.episodes,
        log_every=top.log_every,
        optimizer=adam,
        progress=False,
    )
    agent.q.load_state_dict(checkpoint.load(run_dir / "best.pt")["model"])
    best = greedy_returns(agent.q.eval(), env, 100, seed + 50_000)
    return {
        "variant": variant,
        "seed": seed,
        "solved_step": result["solved_step"],
        "best_100": float(best.mean()),
        "train_return": result["train_return_last100"],
        "steps_per_s": result["steps_per_s"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=100_000)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--jobs", type=int, default=2)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as root, ProcessPoolExecutor(args.jobs) as pool:
        futures = [pool.submit(run, v, s, args.steps, root) for v in VARIANTS for s in args.seeds]
        results = [f.result() for f in futures]
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"DQN on CartPole-v1, {args.steps:,} steps, seeds {args.seeds} ({args.jobs} runs at a time)")
    for col in (
        "variant",
        "solved (greedy ≥ 475) at step",
        "seeds solved",
        "best.pt, 100 greedy episodes",
        "training return (last 100)",
        "steps/s",
    ):
        table.add_column(col, justify="left" if col == "variant" else "right")
    for variant in VARIANTS:
        rows = [r for r in results if r["variant"] == variant]
        solved = [r["solved_step"] for r in rows if r["solved_step"] is not None]
        table.add_row(
            variant,
            ", ".join(f"{r['solved_step']:,}" if r["solved_step"] else "-" for r in rows),
            f"{len(solved)}/{len(rows)}",
            ", ".join(f"{r['best_100']:.1f}" for r in rows),
            f"{statistics.mean(r['train_return'] or 0 for r in rows):.1f}",
            f"{statistics.mean(r['steps_per_s'] for r in rows):.0f}",
        )
    Console(width=160).print(table)


if __name__ == "__main__":
    main()
