"""``nas-cli search-darts``: differentiable architecture search (DARTS, PC-DARTS, latency-aware).

The config becomes typed values here; the search itself is the recipe in ``nas_cli.nas.darts.search``
(a bilevel step on the one training engine). The derived genotype (``genotype.json``) trains from
scratch with ``nas-cli train model=darts model.genotype=RUN/genotype.json``.
"""

from __future__ import annotations

from hydra.utils import instantiate
from omegaconf import DictConfig

from nas_cli.config_values import as_dict
from nas_cli.engine.device import seed_everything
from nas_cli.nas.darts.search import (
    SEARCH_HEADLINE,
    ArchOptions,
    LatencyOptions,
    StepOptions,
    search,
)
from nas_cli.runs.options import RunOptions

COMMAND = "search-darts"


def task(cfg: DictConfig) -> dict:
    opts = RunOptions.from_config(cfg)
    seed_everything(opts.seed)
    data = instantiate(cfg.data, seed=opts.seed)
    supernet = instantiate(cfg.supernet, in_shape=data.in_shape, num_classes=data.num_classes).to(opts.device)
    optimizer = instantiate(cfg.optim)(params=supernet.parameters())  # the weights; alpha has its own Adam
    trainer = instantiate(cfg.trainer, device=opts.device, progress=opts.progress)
    run = opts.run(COMMAND, budget={"trainer.epochs": trainer.epochs}, headline=SEARCH_HEADLINE)
    arch = ArchOptions(**as_dict(cfg.arch))
    latency = LatencyOptions(**as_dict(cfg.latency))
    step = StepOptions(**as_dict(cfg.search))
    return search(supernet, data, trainer, optimizer, instantiate(cfg.sched), run, arch, latency, step)
