"""The ``nas-cli`` command line: thin Typer commands that hand over to one module each.

Hydra commands take Hydra's own syntax after the command name: overrides
(``key=value``, ``group=option``), ``-m`` for sweeps, ``--cfg job``, ``--help``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from nas_cli import __version__

app = typer.Typer(
    name="nas-cli",
    help="Experiment runner for deep-learning research: training recipes, NAS, RL and tools, "
    "configured with Hydra. Run `nas-cli COMMAND --help` for a command's config groups and options.",
    no_args_is_help=True,
    add_completion=True,  # --install-completion / --show-completion (Typer): completes command names
    pretty_exceptions_enable=False,
)

# Hand every token to Hydra untouched, --help included.
HYDRA_COMMAND: dict[str, Any] = {
    "context_settings": {"allow_extra_args": True, "ignore_unknown_options": True},
    "add_help_option": False,
}


def _version(value: bool):
    if value:
        typer.echo(f"nas-cli {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print the version and exit."
    ),
):
    pass


# Hydra commands: name -> one-line summary. Each hands over to nas_cli/commands/<module>.py,
# whose config is conf/<module>.yaml (module = the name with '_' for '-').
HYDRA_COMMANDS = {
    "train": "Train a network: model, data, optimizer, schedule and trainer from Hydra configs.",
    "search-darts": "Differentiable architecture search (DARTS): bilevel search, latency term, genotype to retrain.",
    "search-rl": "RL architecture search: REINFORCE controller, MetaQNN, evolution and random baselines.",
    "dqn": "Train DQN, Double DQN or Dueling DQN on a Gymnasium environment (or evaluate a saved agent).",
    "pg": "Train a policy-gradient agent (REINFORCE with a baseline, or A2C) on a Gymnasium environment.",
    "ga": "Evolve MLP policy weights with a genetic algorithm (deep neuroevolution) on a Gymnasium environment.",
    "detect": "Train a small one-stage detector (GIoU, objectness, class losses; NMS and soft-NMS mAP), or predict.",
    "fuse-bn": "Fold BatchNorm into the conv/linear layer before it, verify the outputs, time the gain.",
    "prep-imagenet": "Turn the ILSVRC2012 archives into an ImageFolder tree: streamed, parallel, resumable, safe.",
    "grad-bench": "Compare gradient estimators (STEs, NES, natural NES, REINFORCE, CDG) for a network with sign "
    "activations.",
}


def _hydra_command(name: str, summary: str) -> None:
    module = name.replace("-", "_")

    def command(ctx: typer.Context):
        from nas_cli import hydra_bridge

        # the module by name: the bridge imports it (and torch) only to run, never to print --help
        hydra_bridge.run(name, f"nas_cli.commands.{module}", module, ctx.args)

    app.command(name, help=summary, **HYDRA_COMMAND)(command)


for _name, _summary in HYDRA_COMMANDS.items():
    _hydra_command(_name, _summary)


@app.command()
def report(
    path: Path = typer.Argument(..., help="A run folder or a multirun folder (searched recursively)."),
    rows: str = typer.Option(
        None,
        "--rows",
        help="Override key for the table's rows, e.g. model.width; with "
        "--cols a pivot, alone a one-key table (a row per value: mean, or mean ± std over seeds).",
    ),
    cols: str = typer.Option(
        None,
        "--cols",
        help="Override key for the columns, e.g. optim.weight_decay; with "
        "--rows a pivot, alone a one-key table (one row, a column per value).",
    ),
    value: str = typer.Option("val_acc", "--value", help="Summary figure in the cells of a pivot or one-key table."),
    plot: bool = typer.Option(False, "--plot", help="Also write learning curves of every job as PNG."),
    group: bool = typer.Option(True, "--group/--no-group", help="Average jobs that differ only by seed."),
    x: list[str] = typer.Option(
        None,
        "--x",
        help="The learning curves' x axis: epoch (curves.png), iterations or "
        "samples_seen (curves_<x>.png, beside batch sizes); repeat or comma-separate for "
        "several plots; implies --plot.",
    ),
):
    """Tabulate runs: every summary.json below PATH as a table (report.md, report.csv, plots)."""
    from nas_cli import hydra_bridge
    from nas_cli.commands import report as command

    with hydra_bridge.exit_on_error("report"):
        command.main(path, rows=rows, cols=cols, value=value, plot=plot, group=group, x=x)


def main() -> None:
    from nas_cli.runs import signals

    signals.exit_after_stop()  # this process ends with the command: a late signal must not kill it unreported
    app()
