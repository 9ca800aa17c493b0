"""What the tests share: a tiny train recipe, composing a command's config as its task receives it, running the
real command line (in this process or in a subprocess), reading a run's record, and fake run folders.

Imported by the tests as ``from helpers import ...``; pytest's own fixtures live in ``conftest.py``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import torch
import yaml
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import open_dict

from nas_cli.config_files import config_dir

# A tiny, fast recipe: synthetic 1x12x12 data, a small CNN, 3 epochs.
TINY = [
    "data=synthetic",
    "data.shape=[1,12,12]",
    "data.n_train=256",
    "data.n_val=64",
    "data.batch_size=32",
    "data.noise=0.5",
    "model.width=8",
    "model.hidden=32",
    "trainer.epochs=3",
    "progress=false",
    "device=cpu",
]


TIMING = ["epoch_time_s", "samples_per_s"]


SMALL_CLI = [a for a in TINY if not a.startswith("trainer.epochs")] + ["trainer.epochs=2"]  # CLI runs of seconds


def tiny_except(overrides) -> list[str]:
    """TINY without what ``overrides`` replace (a new ``data=`` group drops all of TINY's ``data.*``)."""
    keys = {o.split("=", 1)[0].lstrip("+~") for o in overrides}
    groups = {k for k in keys if "." not in k}
    return [t for t in TINY if t.split("=", 1)[0] not in keys and t.split(".", 1)[0] not in groups]


def compose_task(config_name: str, run_dir: Path, overrides: list[str]):
    """A command's composed config, as its task receives it, with Hydra's runtime pointed at ``run_dir``."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(str(config_dir()), version_base="1.3"):
        cfg = compose(config_name, overrides=[*overrides, f"hydra.run.dir={run_dir}"], return_hydra_config=True)
    with open_dict(cfg):
        cfg.hydra.runtime.output_dir = str(run_dir)
        cfg.hydra.job.name = config_name
    HydraConfig.instance().set_config(cfg)
    with open_dict(cfg):
        del cfg["hydra"]
    return cfg


def compose_train(run_dir: Path, overrides: list[str]):
    return compose_task("train", run_dir, overrides)


def cli(*args: str, cwd: Path, env: dict | None = None, timeout: int = 300) -> subprocess.CompletedProcess:
    """Run ``nas-cli`` for real, in a subprocess, from ``cwd``."""
    full_env = {**os.environ, "COLUMNS": "200", **(env or {})}
    if "HYDRA_FULL_ERROR" not in (env or {}):
        full_env.pop("HYDRA_FULL_ERROR", None)
    return subprocess.run(
        [sys.executable, "-m", "nas_cli", *args], cwd=cwd, capture_output=True, text=True, env=full_env, timeout=timeout
    )


def metrics(run_dir: Path) -> pd.DataFrame:
    return pd.read_csv(run_dir / "metrics.csv")


def summary(run_dir: Path) -> dict:
    return json.loads((run_dir / "summary.json").read_text())


def fake_job(folder: Path, overrides: dict, summary_: dict | None, curve: list[float] | None = None) -> Path:
    """A run folder as a command would leave it: .hydra/overrides.yaml, summary.json, metrics.csv."""
    (folder / ".hydra").mkdir(parents=True)
    (folder / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump([f"{k}={v}" for k, v in overrides.items()]))
    if summary_ is not None:
        (folder / "summary.json").write_text(json.dumps(summary_))
    if curve:
        pd.DataFrame(
            {
                "epoch": range(1, len(curve) + 1),
                "train_loss": curve,
                "val_loss": curve,
                "train_acc": [1 - c / 10 for c in curve],
                "val_acc": [1 - c / 10 for c in curve],
            }
        ).to_csv(folder / "metrics.csv", index=False)
    return folder


class TableNet(torch.nn.Module):
    """A network whose outputs are rows of a fixed table: row = the observation's first entry (a state)."""

    def __init__(self, values):
        super().__init__()
        self.values = torch.nn.Parameter(torch.tensor(values, dtype=torch.float32))

    def forward(self, obs):
        return self.values[obs[:, 0].long()]


def in_process(*args: str) -> int:
    """The real command line in this process (no interpreter start-up); returns its exit code."""
    from nas_cli.cli import app

    GlobalHydra.instance().clear()
    try:
        app(list(args), prog_name="nas-cli")
    except SystemExit as ex:
        return ex.code or 0
    finally:
        GlobalHydra.instance().clear()
    return 0
