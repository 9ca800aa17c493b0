"""``nas-cli prep-imagenet``'s recipe: ``prepare`` (``nas_cli.tools.imagenet.prepare``) as a run of the usual
shape: ``summary.json`` in the run folder (status, counts, images fixed, speed). SIGINT/SIGTERM let the
classes being written finish; ``resume=true`` (or the same command again) does only what is missing, since
``dst/.prep_state.json`` records every finished class."""

from __future__ import annotations

from rich import get_console
from rich.text import Text

from nas_cli.errors import UserError
from nas_cli.runs.files import SUMMARY
from nas_cli.runs.options import RunOptions
from nas_cli.tools.imagenet.prepare import Options, prepare

COMMAND = "prep-imagenet"
HEADLINE = ["train_images", "val_images", "images_fixed", "files_written"]


def prep_imagenet(opts: Options, run_opts: RunOptions) -> dict:
    """``prepare`` as a run of the usual shape; a verify that finds count mismatches fails it (exit 1)."""
    console = get_console()
    # prep-imagenet runs on the CPU; the device is recorded as such whatever device= says
    run = run_opts.run(COMMAND, device="cpu", headline=HEADLINE)
    figures: dict = {"src": opts.src, "dst": opts.dst}
    run.figures = lambda: figures
    with run:
        result = prepare(opts, console=console)  # its own status: ok | dry_run | mismatch
        figures.update(
            {k: v for k, v in result.items() if k not in ("status", "wall_time_s")},
            dry_run=result["status"] == "dry_run",
        )
        mismatches = figures.get("verify", {}).get("mismatches", [])
        if mismatches:
            n = len(mismatches)
            raise UserError(
                f"verify: {n} count mismatch{'es' if n > 1 else ''} in {opts.dst} "
                f"(listed above and in {run.dir / SUMMARY})"
            )
    summary = run.summary
    if not opts.dry_run:
        console.print(
            Text.assemble(
                ("done", "green"),
                f": {summary['files_written']:,} images written "
                f"({summary['classes_already_done']} classes already done), "
                f"{summary['images_fixed']} fixed, {summary['wall_time_s']:.1f} s",
            )
        )
    return summary
