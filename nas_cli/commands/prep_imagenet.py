"""``nas-cli prep-imagenet``: the ILSVRC2012 archives as ``dst/train/<wnid>/`` and ``dst/val/<wnid>/``.

The work is in ``nas_cli.tools.imagenet.prepare``; this reads the config, runs it and
writes ``summary.json`` into the Hydra run folder (status, counts, images fixed, speed).
Ctrl-C lets the classes being written finish; re-running the same command resumes.
"""

from __future__ import annotations

import platform
import sys
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf
from rich import get_console
from rich.text import Text

from nas_cli import __version__
from nas_cli.errors import UserError
from nas_cli.record import RunRecord
from nas_cli.tools.imagenet.prepare import Options, prepare

EXIT_INTERRUPTED = 130


def options(cfg: DictConfig) -> Options:
    splits = cfg.splits
    if isinstance(splits, str):
        splits = [splits]
    splits = OmegaConf.to_container(splits) if not isinstance(splits, list) else splits
    return Options(src=str(cfg.src), dst=str(cfg.dst), splits=tuple(splits), workers=int(cfg.workers),
                   labels=str(cfg.labels), fix_images=bool(cfg.fix_images), classes=cfg.classes,
                   per_class=cfg.per_class, subset_seed=int(cfg.subset_seed), verify=bool(cfg.verify),
                   dry_run=bool(cfg.dry_run), progress=bool(cfg.progress))


def task(cfg: DictConfig) -> dict:
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    record = RunRecord(run_dir)
    console = get_console()
    opts = options(cfg)
    base = {"src": str(cfg.src), "dst": str(cfg.dst),
            "versions": {"nas_cli": __version__, "python": platform.python_version()}}
    try:
        summary = prepare(opts, console=console)
    except KeyboardInterrupt:
        record.write_summary({"status": "interrupted", **base})
        console.print(Text.assemble(("interrupted", "yellow"), ": finished classes are kept; "
                                    "run the same command again to finish the rest"))
        sys.exit(EXIT_INTERRUPTED)
    except UserError as ex:
        record.write_summary({"status": "failed", "error": str(ex), **base})
        raise
    summary["versions"] = base["versions"]
    record.write_summary(summary)
    if summary["status"] == "mismatch":
        n = len(summary["verify"]["mismatches"])
        raise UserError(f"verify: {n} count mismatch{'es' if n > 1 else ''} in {opts.dst} "
                        f"(listed above and in {run_dir / 'summary.json'})")
    if summary["status"] == "ok":
        console.print(Text.assemble(("done", "green"), f": {summary['files_written']:,} images written "
                                    f"({summary['classes_already_done']} classes already done), "
                                    f"{summary['images_fixed']} fixed, {summary['wall_time_s']:.1f} s"))
    return summary
