"""Steps/s of `nas-cli dqn` against CleanRL's dqn.py, same hyperparameters, same machine.

CleanRL's dqn.py takes no network sizes or gradient-step counts, so both run with its
CartPole defaults: a 120-84 MLP, Adam lr 2.5e-4, batch 128, buffer 10,000, one update
every 10 steps after 10,000, target copy every 500, epsilon 1 -> 0.05 over half the
run, MSE loss, no gradient clipping. Neither evaluates during the run. Both report
steps / seconds of the environment loop (CleanRL's own "SPS" line, our summary.json).
Runs alternate, so a noisy neighbour slows both sides alike; the table shows each
round and the ratio of medians.

CleanRL runs from its own PyPI package in a separate venv (its pins predate our
dependencies); `make bench-env` creates it at .venv-cleanrl. CleanRL is run as shipped
(torch's default thread count) and pinned to one thread, as we run.

    python bench/dqn_speed.py [--steps 100000] [--rounds 3] [--cleanrl-python .venv-cleanrl/bin/python]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

SHARED = {  # CleanRL flag -> our override
    "--learning-rate": ("optim.lr", 2.5e-4),
    "--buffer-size": ("agent.buffer_size", 10_000),
    "--gamma": ("agent.gamma", 0.99),
    "--tau": ("agent.tau", 1.0),
    "--target-network-frequency": ("agent.target_update", 500),
    "--batch-size": ("agent.batch_size", 128),
    "--start-e": ("agent.start_epsilon", 1.0),
    "--end-e": ("agent.end_epsilon", 0.05),
    "--exploration-fraction": ("agent.exploration_fraction", 0.5),
    "--learning-starts": ("agent.learning_starts", 10_000),
    "--train-frequency": ("agent.train_frequency", 10),
}
OURS_ONLY = ["agent.hidden=[120,84]", "agent.gradient_steps=1", "agent.loss=mse", "agent.grad_clip=null"]


def cleanrl_sps(python: str, script: str, steps: int, threads: int | None, workdir: Path) -> float:
    args = [
        python,
        script,
        "--env-id",
        "CartPole-v1",
        "--total-timesteps",
        str(steps),
        "--cuda",
        "false",
        "--seed",
        "1",
    ]
    for flag, (_, value) in SHARED.items():
        args += [flag, str(value)]
    env = {**os.environ, **({"OMP_NUM_THREADS": str(threads)} if threads else {})}
    out = subprocess.run(args, cwd=workdir, env=env, capture_output=True, text=True)
    if out.returncode:
        raise SystemExit(f"CleanRL's dqn.py failed:\n{out.stderr[-2000:]}")
    return float(re.findall(r"^SPS: (\d+)", out.stdout, re.M)[-1])


def ours_sps(steps: int, workdir: Path, round_: int) -> float:
    run_dir = workdir / f"ours-{round_}"
    args = [
        sys.executable,
        "-m",
        "nas_cli",
        "dqn",
        f"total_steps={steps}",
        f"eval.every={steps * 10}",
        "seed=1",
        "progress=false",
        f"hydra.run.dir={run_dir}",
        *OURS_ONLY,
        *(f"{ours}={value}" for ours, value in SHARED.values()),
    ]
    out = subprocess.run(args, capture_output=True, text=True)
    if out.returncode:
        raise SystemExit(f"nas-cli dqn failed:\n{out.stderr[-2000:]}")
    return json.loads((run_dir / "summary.json").read_text())["steps_per_s"]


def find_cleanrl(python: str) -> str:
    code = "import importlib.util as u; print(u.find_spec('cleanrl.dqn').origin)"
    out = subprocess.run([python, "-c", code], capture_output=True, text=True)
    if out.returncode:
        raise SystemExit(f"no CleanRL under {python}: run `make bench-env` first")
    return out.stdout.strip()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--cleanrl-python", default=".venv-cleanrl/bin/python")
    args = parser.parse_args()
    args.cleanrl_python = str(Path(args.cleanrl_python).absolute())  # the runs happen in a temporary folder
    script = find_cleanrl(args.cleanrl_python)
    sides = {"CleanRL dqn.py (default threads)": None, "CleanRL dqn.py (1 thread)": 1, "nas-cli dqn (1 thread)": 0}
    sps: dict[str, list[float]] = {name: [] for name in sides}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            order = list(sides) if r % 2 == 0 else list(reversed(sides))
            for name in order:
                threads = sides[name]
                value = (
                    ours_sps(args.steps, Path(tmp), r)
                    if threads == 0
                    else cleanrl_sps(args.cleanrl_python, script, args.steps, threads, Path(tmp))
                )
                sps[name].append(value)
                print(f"round {r + 1}: {name}: {value:.0f} steps/s", flush=True)

    from rich.console import Console
    from rich.table import Table

    ours = statistics.median(sps["nas-cli dqn (1 thread)"])
    table = Table(
        title=f"DQN on CartPole-v1, {args.steps:,} steps, CleanRL's hyperparameters, {args.rounds} alternating rounds"
    )
    table.add_column("implementation")
    for r in range(args.rounds):
        table.add_column(f"round {r + 1}", justify="right")
    table.add_column("median steps/s", justify="right")
    table.add_column("nas-cli / this", justify="right")
    for name, values in sps.items():
        median = statistics.median(values)
        table.add_row(name, *(f"{v:.0f}" for v in values), f"{median:.0f}", f"{ours / median:.2f}x")
    Console(width=160).print(table)
    print("goal: nas-cli >= 2x CleanRL's dqn.py")


if __name__ == "__main__":
    main()
