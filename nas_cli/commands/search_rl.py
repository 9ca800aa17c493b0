"""``nas-cli search-rl``: neural architecture search where an agent proposes child networks.

Each child is trained briefly by the one training engine and its validation accuracy is the
controller's reward (or ``reward=synthetic``: a fixed score, for comparing strategies in seconds).
Controllers: ``reinforce`` (Zoph & Le 2017), ``metaqnn`` (Baker et al. 2017), ``random``, ``evolution``.
"""

from __future__ import annotations

from pathlib import Path

import torch
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from nas_cli.engine.device import resolve_device
from nas_cli.nas.rl.search import search


def task(cfg: DictConfig) -> dict:
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    if cfg.get("threads"):
        torch.set_num_threads(int(cfg.threads))
    return search(cfg, run_dir, resolve_device(cfg.device))
