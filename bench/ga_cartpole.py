"""``nas-cli ga`` on CartPole-v1: generations and environment steps until the elite scores 500, and the batched
population evaluation against a loop over members.

1. The default config (conf/ga.yaml) for each seed, with env.threshold=500: the generation and the
   environment steps (every episode played, elite re-evaluations included) at which the elite's
   re-evaluated mean return first reaches 500, and the wall time of the run.
2. One evaluation of a population of --population members x 5 episodes, (a) freshly initialised (short
   episodes) and (b) the last population of the seed-0 run (long episodes): ``population.evaluate`` (one
   ``baddbmm`` per layer and one numpy vector-env step per environment step) against
   ``population.evaluate_one_by_one`` (each member's own QNetwork and vector env), best of --repeats.

    python bench/ga_cartpole.py [--seeds 0 1 2] [--generations 15] [--population 256] [--device cpu]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path


def agent_config(**changes):
    from omegaconf import OmegaConf

    from nas_cli.hydra_bridge import config_dir

    agent = OmegaConf.to_container(OmegaConf.load(config_dir() / "ga.yaml").agent)
    agent.pop("_target_")
    return {**agent, **changes}


def solve(seed: int, generations: int, root: Path) -> dict:
    from nas_cli.agents.envs import EnvSpec
    from nas_cli.agents.ga import GA, train
    from nas_cli.runs.lifecycle import Run

    run = Run(root / f"seed{seed}", "ga", seed=seed, device="cpu")
    tick = time.perf_counter()
    out = train(GA(**agent_config()), EnvSpec(threshold=500.0), run, generations=generations, progress=False)
    return {**out, "seconds": time.perf_counter() - tick, "dir": run.dir}


def best_of(fn, repeats: int) -> tuple[float, object]:
    times, out = [], None
    for _ in range(repeats):
        tick = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - tick)
    return min(times), out


def timing(members, layout, device: str, repeats: int) -> dict:
    import numpy as np

    from nas_cli.agents import population as pop
    from nas_cli.agents.envs import EnvSpec
    from nas_cli.agents.ga import generation_seeds

    members = members.to(device)
    seeds = generation_seeds(123, 0, 0, (len(members), 5))
    batched, (r1, l1) = best_of(lambda: pop.evaluate(members, layout, EnvSpec(), seeds), repeats)
    looped, (r2, _) = best_of(lambda: pop.evaluate_one_by_one(members, layout, EnvSpec(), seeds), 1)
    assert np.array_equal(r1, r2), "batched and per-member returns differ"
    return {
        "batched_s": batched,
        "looped_s": looped,
        "ratio": looped / batched,
        "steps": int(l1.sum()),
        "mean_return": float(r1.mean()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--generations", type=int, default=15)
    parser.add_argument("--population", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    import torch

    from nas_cli.agents import population as pop
    from nas_cli.runs import checkpoint

    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as root:
        runs = [solve(s, args.generations, Path(root)) for s in args.seeds]
        last = checkpoint.load(runs[0]["dir"] / "checkpoints" / "last.pt")["state"]["members"]
    print("GA (conf/ga.yaml defaults) on CartPole-v1, elite (30 re-evaluation episodes) reaching 500:")
    print(f"{'seed':>4} {'generation':>10} {'env steps':>12} {'run s':>7} {'generations run':>16}")
    for s, r in zip(args.seeds, runs):
        print(
            f"{s:>4} {str(r['solved_generation']):>10} {str(r['solved_steps']):>12} {r['seconds']:>7.1f} "
            f"{r['generations']:>16}"
        )
    hidden = agent_config()["hidden"]
    layout = pop.PolicyLayout(4, 2, hidden)
    fresh = layout.init(args.population, torch.Generator().manual_seed(0))
    evolved = (
        last[: args.population]
        if len(last) >= args.population
        else last.repeat(-(-args.population // len(last)), 1)[: args.population]
    )
    print(f"\nOne evaluation, population {args.population} x 5 episodes, device {args.device}, 1 thread:")
    print(f"{'population':>10} {'env steps':>10} {'batched s':>10} {'per member s':>13} {'ratio':>6}")
    for name, members in (("fresh", fresh), ("evolved", evolved)):
        t = timing(members, layout, args.device, args.repeats)
        print(f"{name:>10} {t['steps']:>10} {t['batched_s']:>10.3f} {t['looped_s']:>13.3f} {t['ratio']:>6.1f}x")


if __name__ == "__main__":
    main()
