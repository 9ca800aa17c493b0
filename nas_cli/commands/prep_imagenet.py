"""``nas-cli prep-imagenet``: the ILSVRC2012 archives as ``dst/train/<wnid>/`` and ``dst/val/<wnid>/``.

The work is in ``nas_cli.tools.imagenet.prepare``; this reads the config and runs it as a run of
the usual shape: ``summary.json`` in the Hydra run folder (status, counts, images fixed, speed).
SIGINT/SIGTERM let the classes being written finish; ``resume=true`` (or the same command again)
does only what is missing, since ``dst/.prep_state.json`` records every finished class.
"""

from __future__ import annotations

from omegaconf import DictConfig, OmegaConf
from rich import get_console
from rich.text import Text

from nas_cli.errors import UserError
from nas_cli.runs.files import SUMMARY
from nas_cli.runs.options import RunOptions
from nas_cli.tools.imagenet.prepare import Options, prepare

COMMAND = "prep-imagenet"
HEADLINE = ["train_images", "val_images", "images_fixed", "files_written"]


def options(cfg: DictConfig, seed: int, progress: bool) -> Options:
    splits = cfg.splits
    if isinstance(splits, str):
        splits = [splits]
    splits = OmegaConf.to_container(splits) if not isinstance(splits, list) else splits
    return Options(
        src=str(cfg.src),
        dst=str(cfg.dst),
        splits=tuple(splits),
        workers=int(cfg.workers),
        labels=str(cfg.labels),
        fix_images=bool(cfg.fix_images),
        classes=cfg.classes,
        per_class=cfg.per_class,
        seed=seed,
        verify=bool(cfg.verify),
        dry_run=bool(cfg.dry_run),
        progress=progress,
    )


def task(cfg: DictConfig) -> dict:
    run_opts = RunOptions.from_config(cfg)
    opts = options(cfg, run_opts.seed, run_opts.progress)
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
