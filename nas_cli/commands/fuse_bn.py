"""``nas-cli fuse-bn``: fold BatchNorm into the layer before it, check the outputs, measure the gain.

The config becomes typed values here (the source, the check's, export's and timing's options); the work is
the recipe ``nas_cli.tools.fuse_bn.recipe.fuse``. The source is a nas-cli run (rebuilt from its
``.hydra/config.yaml``, checked on its own validation images) or a torchvision model by name (checked on a
seeded random batch).
"""

from __future__ import annotations

from omegaconf import DictConfig

from nas_cli.engine.device import seed_everything
from nas_cli.errors import UserError
from nas_cli.runs.options import RunOptions
from nas_cli.tools.fuse_bn.recipe import EXPORTED, FuseOptions, Source, fuse

COMMAND = "fuse-bn"


def task(cfg: DictConfig) -> dict:
    opts = RunOptions.from_config(cfg)
    seed_everything(opts.seed)
    source = Source(str(cfg.source), cfg.weights, int(cfg.num_classes), tuple(cfg.input_shape), str(cfg.source_weights))
    options = FuseOptions(
        batch_sizes=[int(b) for b in cfg.batch_sizes],
        repeats=int(cfg.repeats),
        scale_warn=float(cfg.scale_warn),
        export=_export_format(cfg.export),
        export_opset=int(cfg.export_opset),
        export_rtol=float(cfg.export_rtol),
    )
    return fuse(source, opts, options, command=COMMAND)


def _export_format(value) -> str | None:
    if value is None or str(value).lower() in ("null", "none", "false"):
        return None
    if str(value) not in EXPORTED:
        raise UserError(f"export={value}: choose null, {' or '.join(EXPORTED)}")
    return str(value)
