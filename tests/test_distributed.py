"""torchrun with 2 CPU processes (gloo): the same global batch gives the same metrics as one process."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
from helpers import TIMING, cli, summary

from nas_cli.engine.trainer import DIST_STOP_EVERY

NO_BN = [
    "data=synthetic",
    "data.shape=[1,12,12]",
    "data.n_train=256",
    "data.n_val=64",
    "data.batch_size=32",
    "data.noise=0.5",
    "model.width=8",
    "model.hidden=32",
    "model.batchnorm=false",
    "trainer.epochs=3",
    "progress=false",
    "ema.decay=0.9",
]


@pytest.mark.slow
def test_two_process_ddp_matches_one_process(tmp_path):
    torchrun = Path(sys.executable).with_name("torchrun")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    ddp = subprocess.run(
        [
            str(torchrun),
            "--standalone",
            "--nproc_per_node=2",
            "-m",
            "nas_cli",
            "train",
            *NO_BN,
            f"hydra.run.dir={tmp_path / 'ddp'}",
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert ddp.returncode == 0, ddp.stderr[-2000:]
    single = cli("train", *NO_BN, f"hydra.run.dir={tmp_path / 'one'}", cwd=tmp_path)
    assert single.returncode == 0, single.stderr
    a, b = (pd.read_csv(tmp_path / x / "metrics.csv").drop(columns=TIMING) for x in ("ddp", "one"))
    # DDP averages the two half-batch gradients: equal to the full-batch gradient up to float rounding
    pd.testing.assert_frame_equal(a, b, check_exact=False, rtol=1e-5, atol=1e-6)
    assert summary(tmp_path / "ddp")["status"] == "ok"
    # rank 1 wrote no run folder of its own
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ddp", "one"]


def test_sweeps_are_refused_under_torchrun(tmp_path):
    out = cli("train", "-m", "seed=0,1", cwd=tmp_path, env={"WORLD_SIZE": "2"})
    lines = [ln for ln in out.stderr.splitlines() if ln.strip()]
    assert out.returncode == 2 and len(lines) == 1 and "outside torchrun" in lines[0]


STOP_ON_RANK_1 = """
import os, signal, sys
from nas_cli.engine.trainer import Trainer
real, calls = Trainer._backward_step, {"n": 0}

def step(self, *args, **kwargs):
    real(self, *args, **kwargs)
    calls["n"] += 1
    if calls["n"] == 3 and os.environ["RANK"] == "1":  # only one process is signalled
        signal.raise_signal(signal.SIGTERM)

Trainer._backward_step = step
from nas_cli.cli import main
sys.argv = ["nas-cli", *sys.argv[1:]]
main()
"""


@pytest.mark.slow
def test_a_signal_on_one_process_stops_all_at_the_same_batch_and_resumes(tmp_path):
    """Under torchrun the processes agree on a stop every few batches: none is left waiting in an all-reduce."""
    torchrun = Path(sys.executable).with_name("torchrun")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    script = tmp_path / "stop_on_rank_1.py"
    script.write_text(STOP_ON_RANK_1)
    args = [*NO_BN, "data.n_train=1024", "trainer.epochs=2"]  # 32 global batches an epoch
    run = tmp_path / "ddp"
    cut = subprocess.run(
        [str(torchrun), "--standalone", "--nproc_per_node=2", str(script), "train", *args, f"hydra.run.dir={run}"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert cut.returncode != 0 and "interrupted (SIGTERM)" in cut.stderr, cut.stderr[-2000:]
    assert summary(run)["status"] == "interrupted"
    state = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
    assert state["epoch"] == 0 and state["tally"]["loader"]["taken"] == DIST_STOP_EVERY  # the first agreement
    resumed = subprocess.run(
        [str(torchrun), "--standalone", "--nproc_per_node=2", "-m", "nas_cli", "train", f"resume={run}"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    single = cli("train", *args, f"hydra.run.dir={tmp_path / 'one'}", cwd=tmp_path)
    assert single.returncode == 0, single.stderr
    a, b = (pd.read_csv(tmp_path / x / "metrics.csv").drop(columns=TIMING) for x in ("ddp", "one"))
    pd.testing.assert_frame_equal(a, b, check_exact=False, rtol=1e-5, atol=1e-6)
    assert summary(run)["status"] == "ok" and summary(run)["resumes"] == 1
