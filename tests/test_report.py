"""report: long and pivot tables, seed groups, failed jobs, plots, from run folders made here."""

from __future__ import annotations

import statistics

import pandas as pd
import pytest
from conftest import fake_job

from nas_cli.commands import report
from nas_cli.errors import UserError


def ok(val_acc, train_loss=0.1, train_acc=0.9, **extra):
    return {"status": "ok", "train_loss": train_loss, "train_acc": train_acc, "val_acc": val_acc,
            "val_loss": 0.3, "device_hours": 0.001, "gpu_hours": 0.0, **extra}


@pytest.fixture
def sweep(tmp_path):
    """width x weight decay x 3 seeds, one diverged job, one job that died before writing a summary."""
    accs = {}
    n = 0
    for width in (96, 192):
        for wd in ("0", "5e-05"):
            for seed in (0, 1, 2):
                acc = 0.9 + width / 10_000 + (0.01 if wd == "0" else 0.0) + seed / 1000
                accs[(width, wd, seed)] = acc
                fake_job(tmp_path / str(n), {"model.width": width, "optim.weight_decay": wd, "seed": seed},
                         ok(acc, train_loss=0.05 + seed / 100), curve=[1.0, 0.5, 0.25])
                n += 1
    fake_job(tmp_path / str(n), {"model.width": 256, "optim.weight_decay": "0", "seed": 0},
             {"status": "diverged", "train_loss": float("nan"), "train_acc": 0.1, "val_acc": 0.1})
    fake_job(tmp_path / str(n + 1), {"model.width": 256, "optim.weight_decay": "5e-05", "seed": 0}, None)
    return tmp_path, accs


def test_seed_groups_show_mean_std_and_n(sweep):
    root, accs = sweep
    table = report.main(root)
    assert list(table.columns) == ["Width", "Weight Decay", "Training Loss", "Training Accuracy",
                                   "Validation Accuracy", "n", "Status"]
    assert table["Width"].tolist() == ["96", "96", "192", "192", "256", "256"]  # numeric order, not text
    row = table[(table["Width"] == "192") & (table["Weight Decay"] == "5e-05")].iloc[0]
    values = [accs[(192, "5e-05", s)] for s in (0, 1, 2)]
    assert row["Validation Accuracy"] == f"{statistics.mean(values):.4f} ± {statistics.stdev(values):.4f}"
    assert row["n"] == 3 and row["Status"] == "ok"
    statuses = table[table["Width"] == "256"]["Status"].tolist()
    assert statuses == ["diverged", "failed"]  # never dropped
    assert (root / "report.md").read_text().splitlines()[0].startswith("| Width | Weight Decay |")
    written = pd.read_csv(root / "report.csv", dtype=str)
    assert len(written) == 6


def test_no_group_gives_a_row_per_job(sweep):
    root, accs = sweep
    table = report.main(root, group=False)
    assert len(table) == 14 and "Seed" in table.columns
    row = table[(table["Width"] == "96") & (table["Weight Decay"] == "0") & (table["Seed"] == "2")].iloc[0]
    assert row["Validation Accuracy"] == f"{accs[(96, '0', 2)]:.4f}"
    assert row["Training Loss"] == f"{0.07:.5f}"


def test_pivot_averages_over_seeds(sweep):
    root, accs = sweep
    grid = report.main(root, rows="model.width", cols="optim.weight_decay", value="val_acc")
    assert list(grid.columns) == ["Width", "0", "5e-05"]
    cell = grid[grid["Width"] == "96"]["0"].iloc[0]
    assert cell == f"{statistics.mean(accs[(96, '0', s)] for s in (0, 1, 2)):.4f}"


def test_plot_writes_learning_curves(sweep):
    root, _ = sweep
    report.main(root, plot=True)
    png = root / "curves.png"
    assert png.is_file() and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_single_run_shows_its_overrides(tmp_path):
    fake_job(tmp_path, {"model.width": 8, "optim.lr": "0.1"}, ok(0.95))
    table = report.main(tmp_path)
    assert table.to_dict("records") == [{"Width": "8", "Lr": "0.1", "Training Loss": "0.10000",
                                         "Training Accuracy": "0.9000", "Validation Accuracy": "0.9500"}]


@pytest.mark.parametrize("kwargs, message", [
    ({"rows": "model.depth", "cols": "seed"}, "not an override key"),
    ({"rows": "model.width", "cols": "seed", "value": "speed"}, "not a summary figure"),
    ({"rows": "model.width"}, "needs both"),
])
def test_bad_pivot_requests_are_user_errors(sweep, kwargs, message):
    root, _ = sweep
    with pytest.raises(UserError, match=message):
        report.main(root, **kwargs)


def test_empty_folder_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="no runs under"):
        report.main(tmp_path)
