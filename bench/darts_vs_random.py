"""DARTS vs random cells on the shipped digits: does the searched cell beat cells drawn at random from its space?

    .venv/bin/python bench/darts_vs_random.py                 # the default search and recipe (10-30 min on 2 cores)
    .venv/bin/python bench/darts_vs_random.py --quick         # 1 epoch, 200 images, 3 random cells: a smoke check

Measured, one command after another in this process (the commands' own ``task`` functions, their configs composed
as ``nas-cli`` composes them), every run ``threads=1`` (``--threads``) so that search and retrain time are alike:

- DARTS: the default ``nas-cli search-darts`` (no overrides but ``progress``, ``threads`` and the run folder), its
  wall time and its summary's alpha figures (``alpha_*``, ``argmax_*``); its ``genotype.json`` then retrained from
  scratch by the default recipe (``nas-cli train model=darts data=digits``) with seeds 0, 1, 2.
- random cells: K cells (``random_genotype``, Li & Talwalkar 2019's sampling of the DARTS space; genotype seeds
  0..K-1) retrained by the same recipe with training seed 0; their mean ± sd, and the DARTS cell's rank among them
  (its 3-seed mean against each random cell's accuracy).
- random search at DARTS's cost: fresh random cells (genotype seeds 1000, 1001, ...) retrained one after another
  until their retrain time adds up to the search's wall time (at least one cell); the best by final val accuracy
  is retrained with seeds 0, 1, 2 like the DARTS cell. The candidates train with seed 3, so the winner's
  three retrains are new draws of training noise rather than the run it was picked for.

Accuracy is the retrain's ``final_val_acc`` (the held-out 20% of digits, the last epoch); sd is the sample
standard deviation. The table and everything behind it go to ``OUT/darts_vs_random.json``, the run folders
(search, retrains, the random genotypes) beside it.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import torch
import yaml
from hydra.core.global_hydra import GlobalHydra

from nas_cli.commands import search_darts, train
from nas_cli.config_files import config_dir
from nas_cli.models.genotype import Genotype, random_genotype

SEEDS = (0, 1, 2)  # the retrain seeds of each method's chosen cell
RANDOM_TRAIN_SEED = 0  # the K random cells: one retrain each, all with this seed
CANDIDATE_TRAIN_SEED = 3  # random search's candidates: apart from SEEDS, so the winner's retrains are fresh draws
FRESH_GENOTYPE_SEED = 1000  # random search's genotype seeds start here, apart from the K cells' 0..K-1
QUICK = ["trainer.epochs=1", "data.subset=200"]


@dataclass
class Runner:
    """Runs commands in this process with the overrides every run shares; what they print (their summary
    tables) goes to ``OUT/commands.log``, leaving the bench's own output compact."""

    out: Path
    common: list[str]

    def task(self, command: str, run_dir: Path, overrides: list[str]) -> tuple[dict, float]:
        """The command's task on its config composed as ``nas-cli`` composes it: its summary and wall seconds."""
        sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
        from helpers import compose_task  # the tests' composer: Hydra's runtime pointed at run_dir, as nas-cli does

        module, name = {"search-darts": (search_darts, "search_darts"), "train": (train, "train")}[command]
        cfg = compose_task(name, run_dir, [*overrides, *self.common])
        with open(self.out / "commands.log", "a") as log_file, contextlib.redirect_stdout(log_file):
            start = time.perf_counter()
            try:
                summary = module.task(cfg)
            finally:
                GlobalHydra.instance().clear()
            seconds = time.perf_counter() - start
        assert isinstance(summary, dict), summary  # optimized_metric is not set: the task returns its summary
        if summary.get("status") != "ok":
            sys.exit(f"bench/darts_vs_random.py: {command} in {run_dir} ended {summary.get('status')}")
        return summary, seconds

    def retrain(self, cell: Cell, seed: int) -> float:
        """The default retrain recipe on ``cell`` with ``seed``: its final val accuracy (kept in ``cell``)."""
        log(f"retrain {cell.name}, seed {seed}")
        summary, seconds = self.task(
            "train",
            cell.folder / f"seed{seed}",
            ["model=darts", f"model.genotype={cell.genotype}", "data=digits", f"seed={seed}"],
        )
        cell.val_acc[seed], cell.seconds[seed] = float(summary["final_val_acc"]), seconds
        log(f"  val_acc {cell.val_acc[seed]:.4f} in {seconds:.1f} s")
        return cell.val_acc[seed]


@dataclass
class Cell:
    """A cell to retrain: its genotype.json, the folder of its retrain runs, and their results by seed."""

    name: str
    genotype: Path
    folder: Path
    val_acc: dict[int, float] = field(default_factory=dict)
    seconds: dict[int, float] = field(default_factory=dict)

    @classmethod
    def random(cls, seed: int, folder: Path, nodes: int, primitives: list[str]) -> Cell:
        """A cell drawn by ``random_genotype`` with ``seed``, saved as ``folder/genotype.json``."""
        folder.mkdir(parents=True, exist_ok=True)
        random_genotype(nodes, primitives, seed).save(folder / "genotype.json")
        return cls(f"random cell (genotype seed {seed})", folder / "genotype.json", folder)

    def record(self) -> dict:
        return {
            "name": self.name,
            "genotype": str(self.genotype),
            "cell": str(Genotype.load(self.genotype)),
            "val_acc": self.val_acc,
            "seconds": self.seconds,
        }


def mean_sd(values) -> tuple[float, float]:
    values = list(values)
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help=f"{' '.join(QUICK)} everywhere and 3 random cells")
    parser.add_argument("--k", type=int, default=None, help="random cells retrained once each (default 8; quick 3)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads of every run (1: fastest here)")
    parser.add_argument("--out", type=Path, help="output folder (default: outputs/bench/darts_vs_random/<time>)")
    args = parser.parse_args()
    k = args.k if args.k is not None else (3 if args.quick else 8)
    out = args.out or Path("outputs/bench/darts_vs_random") / datetime.now().strftime("%Y-%m-%d_%H-%M-%S")
    out.mkdir(parents=True, exist_ok=True)
    common = ["progress=false", f"threads={args.threads}", *(QUICK if args.quick else [])]
    runner = Runner(out, common)
    space = yaml.safe_load((config_dir() / "supernet" / "darts.yaml").read_text())  # the space search-darts uses
    nodes, primitives = int(space["nodes"]), list(space["primitives"])
    print(f"torch {torch.__version__}, threads {args.threads}, out {out}" + (" (--quick)" if args.quick else ""))

    log("search-darts (its defaults)")
    summary, search_s = runner.task("search-darts", out / "search", [])
    alpha = {key: v for key, v in summary.items() if key.startswith(("alpha_", "argmax_"))}
    darts = Cell("DARTS cell", out / "search" / "genotype.json", out / "darts")
    print(f"search-darts: {search_s:.1f} s ({summary.get('epochs')} epochs); cell {Genotype.load(darts.genotype)}")
    shown = ", ".join(f"{key} {v:.4g}" if isinstance(v, float) else f"{key} {v}" for key, v in alpha.items())
    print("  " + (shown or "no alpha_*/argmax_* figures in its summary"))
    for seed in SEEDS:
        runner.retrain(darts, seed)

    randoms = [Cell.random(seed, out / "random" / f"cell{seed}", nodes, primitives) for seed in range(k)]
    for cell in randoms:
        runner.retrain(cell, RANDOM_TRAIN_SEED)

    candidates: list[Cell] = []
    spent = 0.0
    while not candidates or spent < search_s:
        seed = FRESH_GENOTYPE_SEED + len(candidates)
        log(f"random search: {spent:.0f} of {search_s:.0f} s spent")
        candidates.append(Cell.random(seed, out / "random_search" / f"cell{seed}", nodes, primitives))
        runner.retrain(candidates[-1], CANDIDATE_TRAIN_SEED)
        spent += candidates[-1].seconds[CANDIDATE_TRAIN_SEED]
    best = max(candidates, key=lambda c: c.val_acc[CANDIDATE_TRAIN_SEED])
    winner = Cell(f"random-search winner: {best.name}", best.genotype, best.folder / "winner")
    for seed in SEEDS:
        runner.retrain(winner, seed)

    darts_mean, darts_sd = mean_sd(darts.val_acc.values())
    random_accs = [c.val_acc[RANDOM_TRAIN_SEED] for c in randoms]
    random_mean, random_sd = mean_sd(random_accs)
    winner_mean, winner_sd = mean_sd(winner.val_acc.values())
    above = sum(a > darts_mean for a in random_accs)
    tied = sum(a == darts_mean for a in random_accs)
    rows = [
        {
            "method": "DARTS (search + retrain)",
            "cells": 1,
            "seeds": len(SEEDS),
            "mean": darts_mean,
            "sd": darts_sd,
            "search_s": search_s,
            "wall_s": search_s + sum(darts.seconds.values()),
        },
        {
            "method": f"random cells (seed {RANDOM_TRAIN_SEED})",
            "cells": k,
            "seeds": 1,
            "mean": random_mean,
            "sd": random_sd,
            "search_s": None,
            "wall_s": sum(c.seconds[RANDOM_TRAIN_SEED] for c in randoms),
        },
        {
            "method": "random search (DARTS's time)",
            "cells": len(candidates),
            "seeds": len(SEEDS),
            "mean": winner_mean,
            "sd": winner_sd,
            "search_s": spent,
            "wall_s": spent + sum(winner.seconds.values()),
        },
    ]
    # cells: cells trained; seeds: retrains behind mean ± sd; search s: finding the cell; wall s: all of it
    print()
    print(f"{'method':<30} {'cells':>5} {'seeds':>5} {'val acc mean ± sd':>18} {'search s':>9} {'wall s':>7}")
    for r in rows:
        search = f"{r['search_s']:.0f}" if r["search_s"] is not None else "-"
        print(
            f"{r['method']:<30} {r['cells']:>5} {r['seeds']:>5} {r['mean']:>9.4f} ± {r['sd']:.4f} {search:>9} "
            f"{r['wall_s']:>7.0f}"
        )
    rank = (
        f"DARTS cell (mean {darts_mean:.4f} over seeds {', '.join(map(str, SEEDS))}) ranks {above + 1} of {k + 1} "
        f"among the {k} random cells: {above} above, {tied} tied, {k - above - tied} below"
    )
    print(rank)
    print(
        f"random search: {len(candidates)} cells in {spent:.0f} s of retraining (the DARTS search: {search_s:.0f} s); "
        f"best {best.name}, val_acc {best.val_acc[CANDIDATE_TRAIN_SEED]:.4f} at seed {CANDIDATE_TRAIN_SEED}"
    )
    print(
        f"seconds per retrain: DARTS cell {statistics.fmean(darts.seconds.values()):.1f}, random cells "
        f"{statistics.fmean(c.seconds[RANDOM_TRAIN_SEED] for c in randoms):.1f} (means)"
    )
    record = {
        "quick": args.quick,
        "overrides": common,
        "rows": rows,
        "rank": {"line": rank, "position": above + 1, "of": k + 1, "above": above, "tied": tied},
        "search": {"seconds": search_s, "alpha": alpha, "summary_wall_time_s": summary.get("wall_time_s")},
        "darts": darts.record(),
        "random_cells": [c.record() for c in randoms],
        "random_search": {"budget_s": search_s, "spent_s": spent, "candidates": [c.record() for c in candidates]},
        "random_search_winner": winner.record(),
    }
    (out / "darts_vs_random.json").write_text(json.dumps(record, indent=2) + "\n")
    print(f"written: {out / 'darts_vs_random.json'}")


if __name__ == "__main__":
    main()
