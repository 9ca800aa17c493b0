"""The ``nas-cli`` command line: thin Typer commands that hand over to one module each.

Hydra commands take Hydra's own syntax after the command name: overrides
(``key=value``, ``group=option``), ``-m`` for sweeps, ``--cfg job``, ``--help``.
"""

from __future__ import annotations

from pathlib import Path

import typer

from nas_cli import __version__

app = typer.Typer(
    name="nas-cli",
    help="Experiment runner for deep-learning research: training recipes, NAS, RL and tools, "
         "configured with Hydra. Run `nas-cli COMMAND --help` for a command's config groups and options.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

# Hand every token to Hydra untouched, --help included.
HYDRA_COMMAND = {"context_settings": {"allow_extra_args": True, "ignore_unknown_options": True},
                 "add_help_option": False}


def _version(value: bool):
    if value:
        typer.echo(f"nas-cli {__version__}")
        raise typer.Exit()


@app.callback()
def _root(version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                       help="Print the version and exit.")):
    pass


@app.command(**HYDRA_COMMAND)
def train(ctx: typer.Context):
    """Train a network: model, data, optimizer, schedule and trainer from Hydra configs."""
    from nas_cli import hydra_bridge
    from nas_cli.commands import train as command

    hydra_bridge.run("train", command.task, "train", ctx.args)


@app.command("search-darts", **HYDRA_COMMAND)
def search_darts(ctx: typer.Context):
    """Differentiable architecture search (DARTS): bilevel search, latency term, genotype for retraining."""
    from nas_cli import hydra_bridge
    from nas_cli.commands import search_darts as command

    hydra_bridge.run("search-darts", command.task, "search_darts", ctx.args)


@app.command("search-rl", **HYDRA_COMMAND)
def search_rl(ctx: typer.Context):
    """RL architecture search: REINFORCE controller, MetaQNN, evolution and random baselines."""
    from nas_cli import hydra_bridge
    from nas_cli.commands import search_rl as command

    hydra_bridge.run("search-rl", command.task, "search_rl", ctx.args)


@app.command(**HYDRA_COMMAND)
def dqn(ctx: typer.Context):
    """Train DQN, Double DQN or Dueling DQN on a Gymnasium environment (or evaluate a saved agent)."""
    from nas_cli import hydra_bridge
    from nas_cli.commands import dqn as command

    hydra_bridge.run("dqn", command.task, "dqn", ctx.args)


@app.command("grad-bench", **HYDRA_COMMAND)
def grad_bench(ctx: typer.Context):
    """Compare gradient estimators (STE variants, NES, CDG) for a network with binary activations."""
    from nas_cli import hydra_bridge
    from nas_cli.commands import grad_bench as command

    hydra_bridge.run("grad-bench", command.task, "grad_bench", ctx.args)


@app.command("fuse-bn", **HYDRA_COMMAND)
def fuse_bn(ctx: typer.Context):
    """Fold BatchNorm into the conv/linear layer before it, verify the outputs, time the gain."""
    from nas_cli import hydra_bridge
    from nas_cli.commands import fuse_bn as command

    hydra_bridge.run("fuse-bn", command.task, "fuse_bn", ctx.args)


@app.command("prep-imagenet", **HYDRA_COMMAND)
def prep_imagenet(ctx: typer.Context):
    """Turn the ILSVRC2012 archives into an ImageFolder tree: streamed, parallel, resumable, safe."""
    from nas_cli import hydra_bridge
    from nas_cli.commands import prep_imagenet as command

    hydra_bridge.run("prep-imagenet", command.task, "prep_imagenet", ctx.args)


@app.command()
def report(
    path: Path = typer.Argument(..., help="A run folder or a multirun folder (searched recursively)."),
    rows: str = typer.Option(None, "--rows", help="Pivot: override key for the table's rows, e.g. model.width."),
    cols: str = typer.Option(None, "--cols", help="Pivot: override key for the columns, e.g. optim.weight_decay."),
    value: str = typer.Option("val_acc", "--value", help="Pivot: summary metric in the cells."),
    plot: bool = typer.Option(False, "--plot", help="Also write learning curves of every job as PNG."),
    group: bool = typer.Option(True, "--group/--no-group", help="Average jobs that differ only by seed."),
):
    """Tabulate runs: every summary.json below PATH as a table (report.md, report.csv, plots)."""
    from nas_cli import hydra_bridge
    from nas_cli.commands import report as command

    with hydra_bridge.exit_on_error("report"):
        command.main(path, rows=rows, cols=cols, value=value, plot=plot, group=group)


def main() -> None:
    app()
