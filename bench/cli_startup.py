"""Start-up time of the command line: how long `nas-cli --help` and `nas-cli COMMAND --help` take.

Each line is the median wall time of N cold process starts (a new Python process each time, as a user
types it), beside `python -c "import torch"`, the floor of any command that loads torch: a help text
that costs less than that one import did not load it. The last column says whether the help path
imported torch at all (one more start, under ``python -X importtime``).

    python bench/cli_startup.py [--repeats 5] [--commands train dqn ...]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from nas_cli.cli import HYDRA_COMMANDS

COMMANDS = [*HYDRA_COMMANDS, "report"]


def nas_cli() -> list[str]:
    """The console script next to this interpreter (what a user runs), else ``python -m nas_cli``."""
    script = Path(sys.executable).parent / "nas-cli"
    return [str(script)] if script.is_file() else [sys.executable, "-m", "nas_cli"]


def run(argv: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    out = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=600)
    if out.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} failed ({out.returncode}): {out.stderr.strip()[-500:]}")
    return out


def median_start(argv: list[str], repeats: int, env: dict[str, str]) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run(argv, env)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def loads_torch(args: list[str], env: dict[str, str]) -> bool:
    """Whether ``nas-cli ARGS`` imports torch (``-X importtime`` lists every module it imports)."""
    out = run([sys.executable, "-X", "importtime", "-m", "nas_cli", *args], env)
    return any(line.rsplit("|", 1)[-1].strip() == "torch" for line in out.stderr.splitlines())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5, help="process starts per line (the median is shown)")
    parser.add_argument("--commands", nargs="*", default=COMMANDS, help="the commands whose --help is timed")
    args = parser.parse_args()
    env = {**os.environ, "COLUMNS": "100", "HYDRA_FULL_ERROR": "0"}
    cli = nas_cli()
    run(cli + ["--help"], env)  # warm the file cache once: every start below reads the same files
    reference = median_start([sys.executable, "-c", "import torch"], args.repeats, env)

    table = Table(title=f"nas-cli start-up: median of {args.repeats} process starts (cpus: {os.cpu_count()})")
    for name, justify in [
        ("command line", "left"),
        ("seconds", "right"),
        ("/ import torch", "right"),
        ("imports torch", "center"),
    ]:
        table.add_column(name, justify=justify)
    table.add_row('python -c "import torch"', f"{reference:.3f}", "1.00", "yes")
    for words in [["--help"], *([c, "--help"] for c in args.commands)]:
        seconds = median_start(cli + words, args.repeats, env)
        table.add_row(
            "nas-cli " + " ".join(words),
            f"{seconds:.3f}",
            f"{seconds / reference:.2f}",
            "yes" if loads_torch(words, env) else "no",
        )
    Console(width=100).print(table)


if __name__ == "__main__":
    main()
