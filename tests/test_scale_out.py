"""Sweeps and logging at scale: optuna, submitit (local), TensorBoard."""

from __future__ import annotations

import json

import pandas as pd
import pytest
from helpers import SMALL_CLI as SMALL
from helpers import cli, summary


@pytest.mark.slow
def test_optuna_search_returns_the_validation_metric(tmp_path):
    sweep = tmp_path / "opt"
    out = cli(
        "train",
        "-m",
        "hparams_search=optuna",
        "hydra.sweeper.n_trials=3",
        *SMALL,
        f"hydra.sweep.dir={sweep}",
        cwd=tmp_path,
    )
    assert out.returncode == 0, out.stderr
    results = (sweep / "optimization_results.yaml").read_text()
    jobs = [summary(sweep / str(i)) for i in range(3)]
    best = max(j["val_acc"] for j in jobs)
    assert f"best_value: {best}" in results  # the sweeper saw each job's val_acc


@pytest.mark.slow
def test_submitit_local_launcher_runs_the_sweep(tmp_path):
    sweep = tmp_path / "sub"
    out = cli(
        "train", "-m", "hydra/launcher=submitit_local", *SMALL, "seed=0,1", f"hydra.sweep.dir={sweep}", cwd=tmp_path
    )
    assert out.returncode == 0, out.stderr
    assert {summary(sweep / j)["seed"] for j in ("0", "1")} == {0, 1}


@pytest.mark.slow
def test_tensorboard_logger_writes_the_same_scalars(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = cli("train", "logger=tensorboard", *SMALL, f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    rows = pd.read_csv(tmp_path / "run" / "metrics.csv")
    events = EventAccumulator(str(tmp_path / "run" / "tensorboard"))
    events.Reload()
    logged = [e.value for e in events.Scalars("val_acc")]
    assert logged == pytest.approx(rows["val_acc"].tolist())
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["status"] == "ok"
