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
The config becomes the protocol's settings here; the run is the recipe ``nas_cli.gradients.recipe.bench``.
"""

from __future__ import annotations

from omegaconf import DictConfig, OmegaConf

from nas_cli.config_files import config_dir
from nas_cli.config_values import as_dict
from nas_cli.engine.device import seed_everything
from nas_cli.gradients import protocol
from nas_cli.gradients.recipe import bench
from nas_cli.runs.options import RunOptions

COMMAND = "grad-bench"


def settings(cfg: DictConfig) -> protocol.Settings:
    """The protocol's settings: the config's keys as they are (conf/grad_bench.yaml holds every default)."""
    return protocol.Settings.from_config(as_dict(cfg))


def shipped_settings(*overrides: str) -> protocol.Settings:
    """The settings of the shipped conf/grad_bench.yaml with ``key=value`` overrides (for tests and benches)."""
    shipped = OmegaConf.merge(OmegaConf.load(config_dir() / "grad_bench.yaml"), OmegaConf.from_dotlist(list(overrides)))
    return protocol.Settings.from_config(as_dict(shipped))


def task(cfg: DictConfig) -> dict:
    opts = RunOptions.from_config(cfg)
    s = settings(cfg)
    protocol.validate(s)
    seed_everything(s.seed)
    return bench(s, opts, bool(cfg.plots), command=COMMAND)
