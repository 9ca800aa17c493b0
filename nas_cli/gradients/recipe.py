"""``nas-cli grad-bench``'s recipe: the one-step protocol (``nas_cli.gradients.protocol``) as a run.

``bench`` runs every (num_dim, init, batch) block not done yet, rewriting ``metrics.csv`` after each (every
block is a safe point: an interrupted run resumes with the blocks it has not done), then writes ``best.csv`` /
``best.md`` (the summary table), ``curves.csv``, the two PNG plots and ``summary.json``, and prints the table.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd
from rich import get_console
from rich.console import JustifyMethod

from nas_cli.engine.progress import TrainingProgress
from nas_cli.gradients import protocol
from nas_cli.gradients.plots import best_decrease_vs_dim, loss_decrease_vs_lr
from nas_cli.report.format import to_markdown, to_rich
from nas_cli.runs.files import BEST_MARKDOWN, BEST_TABLE, CURVES, DIM_PLOT, LR_PLOT, METRICS
from nas_cli.runs.options import RunOptions
from nas_cli.runs.record import atomic_write

log = logging.getLogger(__name__)
HEADLINE = ["winners", "rows"]


def bench(s: protocol.Settings, opts: RunOptions, plots: bool, *, command: str) -> dict:
    """The run ``command`` in ``opts``'s folder: the protocol's rows with ``s``, the tables and (``plots``) the
    plots; the summary."""
    run = opts.run(command, headline=HEADLINE)
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
        figures.update(_write_results(s, record.rows, run.dir, plots))
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
            loss_decrease_vs_lr(curves, run_dir / LR_PLOT).name,
            best_decrease_vs_dim(best, run_dir / DIM_PLOT).name,
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
    """``best.md``: the best-lr table (``protocol.summarize``'s ``best``) as Markdown."""
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
    """The best-lr table on the terminal, each num_dim's largest loss decrease in bold green."""
    cells, styles = [], []
    for d, part in best.groupby("num_dim"):
        top = part["best_loss_decrease"].idxmax()
        for idx, r in part.iterrows():
            cells.append(
                [
                    str(d),
                    r.estimator,
                    f"{r.best_lr:.3g}",
                    f"{r.best_loss_decrease:.5g}",
                    f"{r.best_relative_decrease:.4f}",
                    f"{r.cosine_to_cdg:.4f}",
                    f"{r.grad_time_s:.3g} s",
                ]
            )
            styles.append("bold green" if idx == top else None)
    columns = ["num_dim", "estimator", "best lr", "loss decrease", "relative", "cos to CDG", "grad time"]
    table = pd.DataFrame(cells, columns=columns, dtype=object)
    # every cell is text: the numbers' columns are named to stay on the right
    right: dict[str, JustifyMethod] = {c: "right" for c in columns if c != "estimator"}
    title = "best loss decrease after one step (mean over inits x batches)"
    get_console().print(to_rich(table, title, styles=styles, justify=right))
