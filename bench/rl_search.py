"""Search strategies on ``reward=synthetic`` (no training): children needed to reach 95% of the best reward.

For each controller and seed, children (distinct architectures; repeats are cache hits and cost
nothing) are scored by the fixed synthetic function of ``conf/search_rl.yaml``. "Best" is the best
reward any run found in that search space; a run that never reaches 95% of it counts as the budget
(marked ``>``). Ratios are to random search in the same space (below 1: fewer children than random).

    .venv/bin/python bench/rl_search.py [--seeds 5] [--budget 300]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from omegaconf import OmegaConf

from nas_cli.hydra_bridge import config_dir
from nas_cli.nas.rl.search import run_in_memory
from nas_cli.nas.rl.synthetic import synthetic_reward

IN_SHAPE = (1, 8, 8)  # digits
RUNS = [
    ("reinforce", "zoph", []),
    ("evolution", "zoph", []),
    ("random", "zoph", []),
    ("metaqnn", "metaqnn", []),  # its epsilon schedule: the paper's Table 2 scaled to the budget
    ("evolution", "metaqnn", []),
    ("random", "metaqnn", []),
]


def controller(cfg, seed: int):
    space = instantiate(cfg.space, in_shape=IN_SHAPE, _convert_="all")
    return instantiate(cfg.controller, space=space, seed=seed, _convert_="all")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--budget", type=int, default=300, help="children per run at most")
    parser.add_argument("--threshold", type=float, default=0.95)
    args = parser.parse_args()
    torch.set_num_threads(1)  # the controllers' tensors are tiny: more threads only wait on each other
    curves: dict[tuple[str, str], list[list[float]]] = {}
    seconds: dict[tuple[str, str], float] = {}
    with initialize_config_dir(str(config_dir()), version_base="1.3"):
        for name, space, overrides in RUNS:
            cfg = compose(
                "search_rl",
                overrides=[
                    f"controller={name}",
                    f"space={space}",
                    "reward=synthetic",
                    f"search.children={args.budget}",
                    *overrides,
                ],
            )
            synth = OmegaConf.to_container(cfg.synthetic, resolve=True)
            t0 = time.perf_counter()
            curves[name, space] = [
                run_in_memory(
                    controller(cfg, seed), lambda a, s=seed, kw=synth: synthetic_reward(a, **kw, seed=s), args.budget
                )
                for seed in range(args.seeds)
            ]
            seconds[name, space] = time.perf_counter() - t0
    best = {space: max(max(c) for (_, sp), runs in curves.items() if sp == space for c in runs) for _, space, _ in RUNS}
    needed = {}
    for (name, space), runs in curves.items():
        target = args.threshold * best[space]
        needed[name, space] = [next((i + 1 for i, r in enumerate(c) if r >= target), None) for c in runs]
    print(
        f"children to reach {args.threshold:.0%} of the best synthetic reward ({args.seeds} seeds, "
        f"budget {args.budget}; best: " + ", ".join(f"{s} {b:.4f}" for s, b in best.items()) + ")"
    )
    print(f"{'controller':<11} {'space':<8} {'per seed':<28} {'mean':>7} {'ratio to random':>16} {'time s':>7}")
    for (name, space), counts in needed.items():
        vals = [c if c is not None else args.budget for c in counts]
        ref = np.mean([c if c is not None else args.budget for c in needed["random", space]])
        shown = " ".join(str(c) if c is not None else f">{args.budget}" for c in counts)
        censored = ">" if any(c is None for c in counts) else ""
        print(
            f"{name:<11} {space:<8} {shown:<28} {censored}{np.mean(vals):>6.1f} {np.mean(vals) / ref:>16.2f} "
            f"{seconds[name, space]:>7.1f}"
        )


if __name__ == "__main__":
    main()
