"""``nas-cli grad-bench``: for a network with sign activations, which gradient estimate makes the loss drop
most after one step?

The problem (``nas_cli.gradients.problem``): ``net(x) = W3 sign(W2 sign(W1 x))``, three ``num_dim x num_dim``
matrices, MSE to a fixed random teacher of the same form, inputs N(0, 1). Estimators: the four STE
variants, NES per population size (fixed sigma), NES with natural-gradient steps of mu and sigma
(``nes_natural``, ``nas_cli.gradients.natural_nes``), REINFORCE on stochastic binary units (``reinforce``,
``nas_cli.gradients.reinforce``), CDG (the reference).
Protocol (``nas_cli.gradients.protocol``): for each num_dim x init x batch, every estimator's gradient, one
step per lr of the grid, the loss decrease, the cosine to CDG. Writes ``metrics.csv`` (one row per
num_dim x estimator x lr x init x batch),
``best.csv`` / ``best.md`` (the summary table), ``curves.csv``, two PNG plots and ``summary.json``.
Every block is a safe point: an interrupted run resumes with the blocks it has not done yet.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd
from omegaconf import DictConfig, OmegaConf
from rich import get_console
from rich.table import Table

from nas_cli.config_files import config_dir
from nas_cli.engine.device import seed_everything
from nas_cli.engine.progress import TrainingProgress
from nas_cli.gradients import plots, protocol
from nas_cli.report.format import to_markdown
from nas_cli.runs.files import BEST_MARKDOWN, BEST_TABLE, CURVES, DIM_PLOT, LR_PLOT, METRICS
from nas_cli.runs.options import RunOptions
from nas_cli.runs.record import atomic_write

log = logging.getLogger(__name__)
COMMAND = "grad-bench"
HEADLINE = ["winners", "rows"]


def settings(cfg: DictConfig) -> protocol.Settings:
    """The protocol's settings: the config's keys as they are (conf/grad_bench.yaml holds every default)."""
    return protocol.Settings.from_config(OmegaConf.to_container(cfg, resolve=True))


def shipped_settings(*overrides: str) -> protocol.Settings:
    """The settings of the shipped conf/grad_bench.yaml with ``key=value`` overrides (for tests and benches)."""
    return settings(
        OmegaConf.merge(OmegaConf.load(config_dir() / "grad_bench.yaml"), OmegaConf.from_dotlist(list(overrides)))
    )


def task(cfg: DictConfig) -> dict:
    opts = RunOptions.from_config(cfg)
    s = settings(cfg)
    protocol.validate(s)
    seed_everything(s.seed)
    run = opts.run(COMMAND, headline=HEADLINE)
    done = run.finished()
    if done is not None:
        return done
    record = run.record
    if run.resume and (run.dir / METRICS).is_file():  # every block was written whole: keep them, run the rest
        record.rows = pd.read_csv(run.dir / METRICS).to_dict("records")
    finished = {(int(r["num_dim"]), int(r["init"]), int(r["batch"])) for r in record.rows}
    figures: dict = {}
    run.figures = lambda: figures
    with run, TrainingProgress(opts.progress) as bar:
        task_id = bar.add_task("blocks", total=len(protocol.blocks(s)), completed=len(finished), info="")

        def on_rows(block: list[dict]) -> None:  # metrics.csv rewritten after every block: a crash keeps the rows
            record.rows.extend(block)
            record.write_metrics()
            bar.tick(task_id)
            run.stop_point()

        protocol.run(s, opts.device, on_rows=on_rows, on_progress=log.info, skip=finished)
        figures.update(_write_results(s, record.rows, run.dir, bool(cfg.plots)))
    print_table(pd.read_csv(run.dir / BEST_TABLE))
    return run.summary


def _write_results(s: protocol.Settings, rows: list[dict], run_dir: Path, plot: bool) -> dict:
    """best.csv, best.md, curves.csv and the plots; returns the summary's figures."""
    curves, best = protocol.summarize(rows)
    atomic_write(run_dir / CURVES, lambda tmp: curves.to_csv(tmp, index=False))
    atomic_write(run_dir / BEST_TABLE, lambda tmp: best.to_csv(tmp, index=False))
    atomic_write(run_dir / BEST_MARKDOWN, lambda tmp: Path(tmp).write_text(best_markdown(best)))
    pngs = (
        [
            plots.loss_decrease_vs_lr(curves, run_dir / LR_PLOT).name,
            plots.best_decrease_vs_dim(best, run_dir / DIM_PLOT).name,
        ]
        if plot
        else []
    )
    winner = {str(d): part.loc[part["best_loss_decrease"].idxmax(), "estimator"] for d, part in best.groupby("num_dim")}
    return {
        "num_dims": s.num_dims,
        "estimators": protocol.estimator_names(s),
        "num_init": s.num_init,
        "num_batch": s.num_batch,
        "batch_size": s.batch_size,
        "num_lrs": len(s.lrs),
        "rows": len(rows),
        "winners": ", ".join(f"d{d}: {e}" for d, e in winner.items()),
        **{f"best_loss_decrease/d{r.num_dim}/{r.estimator}": float(r.best_loss_decrease) for r in best.itertuples()},
        **{f"best_lr/d{r.num_dim}/{r.estimator}": float(r.best_lr) for r in best.itertuples()},
        **{f"cosine_to_cdg/d{r.num_dim}/{r.estimator}": float(r.cosine_to_cdg) for r in best.itertuples()},
        "winner": winner,
        "best": best.to_dict(orient="records"),
        "plots": pngs,
    }


def best_markdown(best: pd.DataFrame) -> str:
    shown = pd.DataFrame(
        {
            "num_dim": best["num_dim"],
            "estimator": best["estimator"],
            "best lr": best["best_lr"].map("{:.3g}".format),
            "loss decrease (mean ± std)": [
                f"{m:.5g} ± {s:.2g}" for m, s in zip(best["best_loss_decrease"], best["best_loss_decrease_std"])
            ],
            "relative decrease": best["best_relative_decrease"].map("{:.4f}".format),
            "cosine to CDG": best["cosine_to_cdg"].map("{:.4f}".format),
        }
    )
    return to_markdown(shown) + "\n"


def print_table(best: pd.DataFrame) -> None:
    table = Table(title="best loss decrease after one step (mean over inits x batches)")
    for col, just in (
        ("num_dim", "right"),
        ("estimator", "left"),
        ("best lr", "right"),
        ("loss decrease", "right"),
        ("relative", "right"),
        ("cos to CDG", "right"),
        ("grad time", "right"),
    ):
        table.add_column(col, justify=just)
    for d, part in best.groupby("num_dim"):
        top = part["best_loss_decrease"].idxmax()
        for idx, r in part.iterrows():
            style = "bold green" if idx == top else None
            table.add_row(
                str(d),
                r.estimator,
                f"{r.best_lr:.3g}",
                f"{r.best_loss_decrease:.5g}",
                f"{r.best_relative_decrease:.4f}",
                f"{r.cosine_to_cdg:.4f}",
                f"{r.grad_time_s:.3g} s",
                style=style,
            )
    get_console().print(table)
