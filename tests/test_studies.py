"""The two study presets, shrunk, through the real CLI (multirun), and the report's figures checked against the
runs' own files: experiment=batch_size_study (lr scaled with the batch, a fixed budget of samples, curves against
iterations and samples seen) and experiment=init_study (zero init leaves the hidden units identical)."""

from __future__ import annotations

import itertools
import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from helpers import cli, compose_train
from hydra.core.global_hydra import GlobalHydra
from hydra.utils import instantiate

import nas_cli.resolvers  # noqa: F401  (registers ${mul:...} and ${div:...})
from nas_cli.commands import report
from nas_cli.models.mlp import MLP
from nas_cli.report.tables import fmt

SHRINK = ["data.subset=600", "trainer.epochs=2", "model.width=32", "device=cpu"]  # seconds per job


def multirun(tmp_path: Path, *args: str) -> list[Path]:
    out = cli("train", "-m", *args, *SHRINK, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    (sweep,) = (tmp_path / "outputs" / "train" / "multiruns").iterdir()
    return sorted((d for d in sweep.iterdir() if d.is_dir()), key=lambda d: int(d.name))


def summary(job: Path) -> dict:
    return json.loads((job / "summary.json").read_text())


@pytest.mark.parametrize("batch_size", [16, 1024])
def test_the_batch_size_preset_scales_the_lr_linearly(tmp_path, batch_size):
    try:
        cfg = compose_train(tmp_path, ["experiment=batch_size_study", f"data.batch_size={batch_size}"])
    finally:
        GlobalHydra.instance().clear()
    optimizer = instantiate(cfg.optim)(params=[torch.nn.Parameter(torch.zeros(1))])
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.02 * batch_size / 64)  # the preset's base rule


@pytest.mark.slow
def test_batch_size_study_curves_and_table_match_the_runs(tmp_path):
    # sched=none: a constant lr, so each job's metrics.csv shows the scaled lr itself
    jobs = multirun(
        tmp_path, "experiment=batch_size_study", "data.batch_size=32,256", "sched=none", "sched.warmup_epochs=0"
    )
    out = cli("report", str(jobs[0].parent), "--x", "iterations", "--x", "samples_seen", cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    table = pd.read_csv(jobs[0].parent / "report.csv", dtype=str)
    for job, batch in zip(jobs, (32, 256)):
        metrics = pd.read_csv(job / "metrics.csv")
        assert metrics["lr"].tolist() == pytest.approx([0.02 * batch / 64] * 2)
        # the budget: the same samples at every batch size, ceil(600 / batch) steps an epoch
        assert metrics["samples_seen"].tolist() == [600, 1200]
        assert metrics["iterations"].tolist() == [math.ceil(600 / batch), 2 * math.ceil(600 / batch)]
        row = table[table["Batch Size"] == str(batch)].iloc[0]
        assert row["Validation Accuracy"] == f"{summary(job)['val_acc']:.4f}"
        for x in ("iterations", "samples_seen"):
            drawn = pd.read_csv(jobs[0].parent / f"curves_{x}.csv")
            mine = drawn[drawn["job"].astype(str) == job.name]
            assert mine[x].tolist() == metrics[x].tolist()
            assert mine["val_acc"].tolist() == pytest.approx(metrics["val_acc"].tolist())
            assert mine["label"].iloc[0] == f"data.batch_size={batch}"
    for x in ("iterations", "samples_seen"):
        assert (jobs[0].parent / f"curves_{x}.png").read_bytes()[:4] == b"\x89PNG"


def pairwise_mean(rows: np.ndarray) -> float:
    """Mean Euclidean distance over all pairs of rows, written out (not the model's own code)."""
    pairs = list(itertools.combinations(range(len(rows)), 2))
    return float(np.mean([np.linalg.norm(rows[i] - rows[j]) for i, j in pairs]))


@pytest.mark.slow
def test_init_study_zero_init_leaves_the_hidden_units_identical(tmp_path):
    jobs = multirun(tmp_path, "experiment=init_study", "model.init=zeros,kaiming", "trainer.epochs=1")
    table = report.main(jobs[0].parent)
    assert "Hidden Unit Distance" in table.columns  # beside the accuracies: from the headline
    figures = {}
    for job, init in zip(jobs, ("zeros", "kaiming")):
        s = summary(job)
        assert "hidden_unit_distance" in s["headline"]
        weights = torch.load(job / "model.pt", weights_only=True)["model"]
        hidden = [k[: -len(".weight")] for k in weights if k.endswith(".weight")][:-1]  # all but the classifier
        assert len(hidden) == 2
        by_hand = np.mean(
            [
                pairwise_mean(
                    np.hstack([weights[f"{h}.weight"].double().numpy(), weights[f"{h}.bias"].double().numpy()[:, None]])
                )
                for h in hidden
            ]
        )
        assert s["hidden_unit_distance"] == pytest.approx(by_hand, rel=1e-9, abs=1e-12)
        row = table[table["Init"] == init].iloc[0]
        assert row["Hidden Unit Distance"] == fmt("hidden_unit_distance", s["hidden_unit_distance"])
        assert row["Validation Accuracy"] == f"{s['val_acc']:.4f}"
        figures[init] = s
    assert figures["zeros"]["hidden_unit_distance"] <= 1e-6
    assert figures["kaiming"]["hidden_unit_distance"] > 0.5
    assert figures["zeros"]["val_acc"] < 0.2 < 0.6 < figures["kaiming"]["val_acc"]  # chance vs learning


@pytest.mark.parametrize("scheme", ["zeros", "constant"])
def test_zero_and_constant_init_give_every_hidden_unit_the_same_weights(scheme):
    model = MLP((1, 4, 4), 3, width=5, depth=2, init=scheme)
    for layer in model.hidden_layers():
        fan_in = layer.weight.shape[1]
        expected = 0.0 if scheme == "zeros" else 1.0 / fan_in
        assert torch.equal(layer.weight, torch.full_like(layer.weight, expected))
        assert torch.equal(layer.bias, torch.zeros_like(layer.bias))
    assert model.summary_figures() == {"hidden_unit_distance": 0.0}
    kaiming = MLP((1, 4, 4), 3, width=5, depth=2, init="kaiming").summary_figures()["hidden_unit_distance"]
    assert kaiming > 0.5
