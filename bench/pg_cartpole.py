"""`nas-cli pg` (reinforce and a2c) on CartPole-v1 against stable-baselines3's A2C, same budget, same machine.

For each seed: the first step at which the greedy evaluation (20 episodes, the most likely action) reaches
475, the best checkpoint's mean return over 100 fresh episodes, and training steps/s (evaluation time left
out on both sides, one torch thread on both sides). SB3's A2C runs with its own defaults (n_steps 5, RMSprop
7e-4, 64-64 tanh, vf_coef 0.5, max_grad_norm 0.5) on 8 environments, the rl-zoo CartPole recipe, which
`nas-cli pg`'s defaults follow; it is evaluated the same way by a callback every 10,000 steps.

SB3 runs in the separate bench venv (`make bench-env`: .venv-cleanrl, stable-baselines3 2.3.2,
gymnasium 0.29.1). Runs alternate between the two sides, so a noisy neighbour slows both alike.

    python bench/pg_cartpole.py [--steps 200000] [--seeds 0 1 2] [--sb3-python .venv-cleanrl/bin/python]

Goal: a2c reaches 475 within 200k steps on 3/3 seeds and runs at >= SB3's steps/s.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

EVAL_EVERY, EVAL_EPISODES, FINAL_EPISODES = 10_000, 20, 100

SB3 = r"""
import json, sys, time
import numpy as np, torch
torch.set_num_threads(1)
from stable_baselines3 import A2C
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.evaluation import evaluate_policy

steps, seed, every, episodes, final, out = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), \
    int(sys.argv[5]), sys.argv[6]


class Evaluate(BaseCallback):
    def __init__(self):
        super().__init__()
        self.next, self.best, self.solved, self.eval_s = every, -np.inf, None, 0.0

    def _on_step(self):
        if self.num_timesteps >= self.next:
            started = time.perf_counter()
            env = make_vec_env("CartPole-v1", n_envs=episodes, seed=10_000 + seed + self.num_timesteps)
            mean, _ = evaluate_policy(self.model, env, n_eval_episodes=episodes, deterministic=True)
            if mean > self.best:
                self.best = mean
                self.model.save(out)
            if self.solved is None and mean >= 475:
                self.solved = self.num_timesteps
            self.next += every
            self.eval_s += time.perf_counter() - started
        return True


model = A2C("MlpPolicy", make_vec_env("CartPole-v1", n_envs=8, seed=seed), seed=seed, device="cpu")
callback = Evaluate()
started = time.perf_counter()
model.learn(steps, callback=callback)
train_s = time.perf_counter() - started - callback.eval_s
best = A2C.load(out, device="cpu")
returns, _ = evaluate_policy(best, make_vec_env("CartPole-v1", n_envs=final, seed=20_000 + seed),
                             n_eval_episodes=final, deterministic=True, return_episode_rewards=True)
print(json.dumps({"solved_step": callback.solved, "best_eval": callback.best, "final_mean": float(np.mean(returns)),
                  "steps_per_s": model.num_timesteps / train_s}))
"""


def ours(algo: str, seed: int, steps: int, work: Path) -> dict:
    run = work / f"{algo}-{seed}"
    common = ["progress=false", "threads=1", "device=cpu"]
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "nas_cli",
            "pg",
            f"agent.algo={algo}",
            f"seed={seed}",
            f"total_steps={steps}",
            f"eval.every={EVAL_EVERY}",
            f"eval.episodes={EVAL_EPISODES}",
            *common,
            f"hydra.run.dir={run}",
        ],
        capture_output=True,
        text=True,
    )
    if out.returncode:
        raise SystemExit(f"nas-cli pg failed:\n{out.stderr[-2000:]}")
    record = json.loads((run / "summary.json").read_text())
    ev = work / f"{algo}-{seed}-eval"
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "nas_cli",
            "pg",
            "mode=eval",
            f"source={run}",
            f"seed={seed}",
            f"eval.episodes={FINAL_EPISODES}",
            *common,
            f"hydra.run.dir={ev}",
        ],
        capture_output=True,
        text=True,
    )
    if out.returncode:
        raise SystemExit(f"nas-cli pg mode=eval failed:\n{out.stderr[-2000:]}")
    final = json.loads((ev / "summary.json").read_text())["eval_return_mean"]
    return {
        "solved_step": record["solved_step"],
        "best_eval": record["best_eval_return"],
        "final_mean": final,
        "steps_per_s": record["train_steps_per_s"],
    }


def sb3(python: str, seed: int, steps: int, work: Path) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out = subprocess.run(
        [
            python,
            "-c",
            SB3,
            str(steps),
            str(seed),
            str(EVAL_EVERY),
            str(EVAL_EPISODES),
            str(FINAL_EPISODES),
            str(work / f"sb3-{seed}.zip"),
        ],
        capture_output=True,
        text=True,
        env=env,
    )
    if out.returncode:
        raise SystemExit(f"SB3's A2C failed (run `make bench-env`?):\n{out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=200_000)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--sb3-python", default=".venv-cleanrl/bin/python")
    args = parser.parse_args()
    python = str(Path(args.sb3_python).absolute())
    sides = ["nas-cli pg reinforce", "nas-cli pg a2c", "SB3 A2C"]
    results: dict[str, list[dict]] = {name: [] for name in sides}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for i, seed in enumerate(args.seeds):
            for name in sides if i % 2 == 0 else reversed(sides):
                result = (
                    sb3(python, seed, args.steps, work)
                    if name == "SB3 A2C"
                    else ours(name.split()[-1], seed, args.steps, work)
                )
                results[name].append(result)
                print(f"seed {seed}: {name}: {json.dumps(result)}", flush=True)

    from rich.console import Console
    from rich.table import Table

    table = Table(
        title=f"CartPole-v1, {args.steps:,} steps, seeds {args.seeds}: first step at which the greedy "
        f"evaluation ({EVAL_EPISODES} episodes) reaches 475, best.pt over {FINAL_EPISODES} episodes"
    )
    for column in (
        "implementation",
        "steps to 475 (per seed)",
        "solved",
        "best.pt over 100 (per seed)",
        "median steps/s",
    ):
        table.add_column(column, justify="left" if column == "implementation" else "right")
    for name, rows in results.items():
        solved = [r["solved_step"] for r in rows]
        table.add_row(
            name,
            ", ".join("-" if s is None else f"{s:,}" for s in solved),
            f"{sum(s is not None for s in solved)}/{len(rows)}",
            ", ".join(f"{r['final_mean']:.1f}" for r in rows),
            f"{statistics.median(r['steps_per_s'] for r in rows):.0f}",
        )
    Console(width=160).print(table)
    ratio = statistics.median(r["steps_per_s"] for r in results["nas-cli pg a2c"]) / statistics.median(
        r["steps_per_s"] for r in results["SB3 A2C"]
    )
    print(f"nas-cli a2c / SB3 A2C steps/s: {ratio:.2f}x")
    print("goal: a2c reaches 475 within 200k steps on 3/3 seeds and runs at >= SB3's steps/s")


if __name__ == "__main__":
    main()
