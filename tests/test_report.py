"""report: long and pivot tables, seed groups, failed jobs, plots, from run folders made here."""

from __future__ import annotations

import statistics

import pandas as pd
import pytest
from helpers import fake_job

from nas_cli.commands import report
from nas_cli.errors import UserError


def ok(val_acc, train_loss=0.1, train_acc=0.9, **extra):
    return {
        "status": "ok",
        "train_loss": train_loss,
        "train_acc": train_acc,
        "val_acc": val_acc,
        "val_loss": 0.3,
        "device_hours": 0.001,
        "gpu_hours": 0.0,
        **extra,
    }


@pytest.fixture
def sweep(tmp_path):
    """width x weight decay x 3 seeds, one diverged job, one job that died in its first epoch without a summary
    (its metrics.csv has no row yet), and the leftover of a job that never started (Hydra's files alone: no row)."""
    accs = {}
    n = 0
    for width in (96, 192):
        for wd in ("0", "5e-05"):
            for seed in (0, 1, 2):
                acc = 0.9 + width / 10_000 + (0.01 if wd == "0" else 0.0) + seed / 1000
                accs[(width, wd, seed)] = acc
                fake_job(
                    tmp_path / str(n),
                    {"model.width": width, "optim.weight_decay": wd, "seed": seed},
                    ok(acc, train_loss=0.05 + seed / 100),
                    curve=[1.0, 0.5, 0.25],
                )
                n += 1
    fake_job(
        tmp_path / str(n),
        {"model.width": 256, "optim.weight_decay": "0", "seed": 0},
        {"status": "diverged", "train_loss": float("nan"), "train_acc": 0.1, "val_acc": 0.1},
    )
    dead = fake_job(tmp_path / str(n + 1), {"model.width": 256, "optim.weight_decay": "5e-05", "seed": 0}, None)
    (dead / "metrics.csv").write_text("epoch,train_loss,train_acc,val_loss,val_acc\n")
    fake_job(tmp_path / str(n + 2), {"model.width": 512, "optim.weight_decay": "0", "seed": 0}, None)
    return tmp_path, accs


def test_seed_groups_show_mean_std_and_n(sweep):
    root, accs = sweep
    table = report.main(root)
    assert list(table.columns) == [
        "Width",
        "Weight Decay",
        "Training Loss",
        "Training Accuracy",
        "Validation Accuracy",
        "n",
        "Status",
    ]
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
    assert table.to_dict("records") == [
        {
            "Width": "8",
            "Lr": "0.1",
            "Training Loss": "0.10000",
            "Training Accuracy": "0.9000",
            "Validation Accuracy": "0.9500",
        }
    ]


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"rows": "model.depth", "cols": "seed"}, "not an override key"),
        ({"rows": "model.width", "cols": "seed", "value": "speed"}, "not a summary figure"),
        ({"cols": "model.depth"}, "use one of: model.width, optim.weight_decay, seed"),
        ({"rows": "model.width", "value": "speed"}, "not a summary figure"),
    ],
)
def test_bad_pivot_requests_are_user_errors(sweep, kwargs, message):
    root, _ = sweep
    with pytest.raises(UserError, match=message):
        report.main(root, **kwargs)


def test_empty_folder_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="no runs under"):
        report.main(tmp_path)


def test_rows_alone_gives_a_row_per_value_with_mean_std_over_seeds(sweep):
    root, accs = sweep
    table = report.main(root, rows="model.width")
    assert list(table.columns) == ["Width", "Validation Accuracy", "n"]
    assert table["Width"].tolist() == ["96", "192", "256"]  # numeric order, not text
    for width in (96, 192):
        values = [acc for (w, _, _), acc in accs.items() if w == width]  # both weight decays, 3 seeds each
        row = table[table["Width"] == str(width)].iloc[0]
        assert row["Validation Accuracy"] == f"{statistics.mean(values):.4f} ± {statistics.stdev(values):.4f}"
        assert row["n"] == 6
    # one seed (diverged at 0.1, the other job has no figure): the plain mean, no ±
    assert table[table["Width"] == "256"].iloc[0].tolist() == ["256", "0.1000", 2]
    assert pd.read_csv(root / "report.csv", dtype=str).columns.tolist() == ["Width", "Validation Accuracy", "n"]


def test_cols_alone_gives_one_row_with_a_column_per_value(sweep):
    root, _ = sweep
    table = report.main(root, cols="optim.weight_decay", value="train_loss")
    assert list(table.columns) == ["Weight Decay", "0", "5e-05"] and len(table) == 1
    losses = [0.05 + seed / 100 for _ in (96, 192) for seed in (0, 1, 2)]  # the ok jobs; the diverged one is NaN
    expected = f"{statistics.mean(losses):.5f} ± {statistics.stdev(losses):.5f}"
    assert table.iloc[0].tolist() == ["Training Loss", expected, expected]


def test_one_key_without_seeds_is_a_plain_mean(tmp_path):
    for n, (width, lr, acc) in enumerate([(8, "0.1", 0.5), (8, "0.01", 0.75), (16, "0.1", 0.625)]):
        fake_job(tmp_path / str(n), {"model.width": width, "optim.lr": lr}, ok(acc))
    table = report.main(tmp_path, rows="model.width")
    assert table.to_dict("records") == [
        {"Width": "8", "Validation Accuracy": f"{(0.5 + 0.75) / 2:.4f}"},
        {"Width": "16", "Validation Accuracy": "0.6250"},
    ]


def write_metrics(folder, rows: list[dict]):
    pd.DataFrame(rows).to_csv(folder / "metrics.csv", index=False)


def test_unfinished_runs_show_their_last_metrics_row(tmp_path):
    epochs = [
        {"epoch": 1, "train_loss": 0.9, "train_acc": 0.5, "val_loss": 0.8, "val_acc": 0.625},
        {"epoch": 2, "train_loss": 0.7, "train_acc": 0.6875, "val_loss": 0.6, "val_acc": 0.8125},
    ]
    fake_job(tmp_path / "0", {"optim.lr": "0.1"}, ok(0.9))
    interrupted = fake_job(tmp_path / "1", {"optim.lr": "0.2"}, {"status": "interrupted", "train_loss": 0.75})
    write_metrics(interrupted, epochs)
    dead = fake_job(tmp_path / "2", {"optim.lr": "0.3"}, None)  # overrides and metrics.csv, no summary
    write_metrics(dead, epochs[:1])
    running = fake_job(tmp_path / "3", {"optim.lr": "0.4"}, {"status": "running"})
    (running / "metrics.csv").write_text("epoch,train_loss,train_acc,val_loss,val_acc\n")  # no row yet
    done = fake_job(tmp_path / "4", {"optim.lr": "0.5"}, {"status": "ok", "val_acc": 0.5})
    write_metrics(done, epochs)  # a finished run's summary is never patched
    rows = {r["Lr"]: r for r in report.main(tmp_path).to_dict("records")}
    last = pd.read_csv(interrupted / "metrics.csv").iloc[-1]
    assert last["val_acc"] == 0.8125
    assert rows["0.2"] == {
        "Lr": "0.2",
        "Training Loss": "0.75000",  # the summary's own figure is kept
        "Training Accuracy": f"{last['train_acc']:.4f}",
        "Validation Accuracy": "0.8125",
        "Status": "interrupted",
    }
    first = pd.read_csv(dead / "metrics.csv").iloc[-1]
    assert rows["0.3"] == {
        "Lr": "0.3",
        "Training Loss": f"{first['train_loss']:.5f}",
        "Training Accuracy": f"{first['train_acc']:.4f}",
        "Validation Accuracy": f"{first['val_acc']:.4f}",
        "Status": "failed",
    }
    assert [rows["0.4"][c] for c in ("Validation Accuracy", "Status")] == ["-", "running"]
    assert [rows["0.5"][c] for c in ("Training Loss", "Validation Accuracy", "Status")] == ["-", "0.5000", "ok"]


def test_same_overrides_are_told_apart_by_their_folder(tmp_path):
    for name, width, acc in [("a", 8, 0.5), ("a-resumed", 8, 0.625), ("b", 16, 0.75)]:
        fake_job(tmp_path / name, {"model.width": width}, ok(acc))
    table = report.main(tmp_path)
    assert table[["Run", "Width", "Validation Accuracy"]].values.tolist() == [
        ["a", "8", "0.5000"],
        ["a-resumed", "8", "0.6250"],
        ["b", "16", "0.7500"],
    ]
    assert list(table.columns)[:2] == ["Run", "Width"]


def test_a_run_without_overrides_is_named_by_its_folder(tmp_path):
    run = fake_job(tmp_path / "2024-05-01_12-00-00", {}, ok(0.875))
    table = report.main(run)
    assert table.to_dict("records") == [
        {"Run": run.name, "Training Loss": "0.10000", "Training Accuracy": "0.9000", "Validation Accuracy": "0.8750"}
    ]


def test_headline_columns_come_from_the_summaries(tmp_path):
    dqn = ["best_eval_return", "train_return_last100", "solved_step"]
    fake_job(
        tmp_path / "0",
        {"agent": "dqn"},
        {
            "status": "ok",
            "command": "dqn",
            "headline": dqn,
            "best_eval_return": 195.5,
            "train_return_last100": 180.25,
            "solved_step": 12000,
            "steps": 20000,
        },
    )
    fake_job(
        tmp_path / "1",
        {"agent": "double"},
        {
            "status": "ok",
            "command": "dqn",
            "headline": dqn,
            "best_eval_return": 120.0,
            "train_return_last100": 99.5,
            "solved_step": None,
            "steps": 20000,
        },
    )
    fake_job(tmp_path / "2", {"agent": "old"}, ok(0.5))  # a run from before summaries named their headline
    table = report.main(tmp_path)
    assert list(table.columns) == [
        "Agent",
        "Best Eval Return",
        "Train Return Last100",
        "Solved Step",
        "Training Loss",
        "Training Accuracy",
        "Validation Accuracy",
    ]
    rows = {r["Agent"]: r for r in table.to_dict("records")}
    assert [rows["dqn"][c] for c in ("Best Eval Return", "Solved Step", "Validation Accuracy")] == [
        "195.5000",
        "12000",
        "-",
    ]  # an int stays an int, even where another run has none
    assert [rows["double"][c] for c in ("Train Return Last100", "Solved Step")] == ["99.5000", "-"]
    assert rows["old"]["Validation Accuracy"] == "0.5000" and rows["old"]["Best Eval Return"] == "-"


@pytest.mark.parametrize(
    "spans, cost, expected",
    [
        ([[91, 100], [91, 100], None], True, "figures: mean of epochs 91-100"),
        ([[8, 8], [8, 8]], False, "figures: epoch 8"),
        ([[91, 100], [41, 50]], True, "figures: means over each run's last epochs (see summary.json averaged_epochs)"),
        ([[8, 8], [2, 2]], False, "figures: each run's final epoch"),
        ([None, None], True, ""),
        ([[8, 8], "null"], False, "figures: epoch 8"),  # a run stopped before its first epoch averages nothing
    ],
)
def test_caption_says_which_epochs_the_figures_average(tmp_path, capsys, spans, cost, expected):
    hours = [0.25 * (n + 1) for n in range(len(spans))]
    for n, (span, h) in enumerate(zip(spans, hours)):
        record = {
            "status": "ok",
            "val_acc": 0.5,
            **({"device_hours": h} if cost else {}),
            **({"averaged_epochs": None if span == "null" else span} if span else {}),
        }
        fake_job(tmp_path / str(n), {"seed": n}, record)
    report.main(tmp_path)
    cost_text = f"total {sum(hours):.4f} device-hours" if cost else ""
    caption = " · ".join(t for t in (cost_text, expected) if t)
    lines = (tmp_path / "report.md").read_text().splitlines()
    assert lines[-2:] == ["", caption]
    assert len(lines) == 2 + 1 + 2  # header, rule, one seed-group row, blank, caption
    assert "figures" not in (tmp_path / "report.csv").read_text()
    assert caption in " ".join(capsys.readouterr().out.split())  # the printed table's caption (rich wraps it)


def test_help_says_either_key_alone_gives_a_one_key_table():
    from typer.testing import CliRunner

    from nas_cli.cli import app

    out = CliRunner().invoke(app, ["report", "--help"], env={"COLUMNS": "200"})
    assert out.exit_code == 0
    assert " ".join(out.output.replace("│", " ").split()).count("alone a one-key table") == 2


def test_caption_and_columns_say_what_validation_and_test_are(tmp_path, capsys):
    headline = ["train_loss", "train_acc", "val_acc", "test_acc"]
    for n in range(2):
        fake_job(
            tmp_path / str(n),
            {"seed": n},
            {
                "status": "ok",
                "headline": headline,
                "val_acc": 0.5,
                "test_acc": 0.4,
                "val_split": "5000 held out from train",
            },
        )
    table = report.main(tmp_path)
    assert "Test Accuracy" in table.columns and "Validation Accuracy" in table.columns
    caption = (tmp_path / "report.md").read_text().splitlines()[-1]
    assert caption == "val_*: 5000 held out from train; test_*: the test set, once after training"


def test_x_axes_are_parsed_and_a_bad_one_is_a_user_error():
    from nas_cli.report.recipe import x_axes

    assert x_axes(None) == ["epoch"]
    assert x_axes(["iterations,samples_seen", "iterations"]) == ["iterations", "samples_seen"]
    with pytest.raises(UserError, match="--x steps is not one of epoch, iterations, samples_seen"):
        x_axes(["steps"])


def test_curves_against_samples_seen_draw_each_jobs_own_columns(tmp_path):
    from nas_cli.report.plots import _steps_on

    for n, batch in enumerate((10, 40)):
        job = fake_job(tmp_path / str(n), {"data.batch_size": batch}, ok(0.5 + n / 10))
        iters = [80 // batch * e for e in (1, 2)]
        pd.DataFrame(
            {
                "epoch": [1, 2],
                "train_loss": [1.0, 0.5],
                "val_loss": [1.1, 0.6],
                "train_acc": [0.5, 0.7],
                "val_acc": [0.4, 0.6 + n / 10],
                "iterations": iters,
                "samples_seen": [80, 160],
            }
        ).to_csv(job / "metrics.csv", index=False)
        pd.DataFrame({"iteration": range(1, iters[-1] + 1), "loss": 1.0, "loss_ema": 1.0}).to_csv(job / "steps.csv")
    report.main(tmp_path, x=["samples_seen"])
    drawn = pd.read_csv(tmp_path / "curves_samples_seen.csv")
    assert drawn[drawn["job"] == 1]["val_acc"].tolist() == [0.4, 0.7]
    assert drawn["samples_seen"].tolist() == [80, 160, 80, 160]
    assert set(drawn["label"]) == {"data.batch_size=10", "data.batch_size=40"}
    assert (tmp_path / "curves_samples_seen.png").is_file() and not (tmp_path / "curves.png").exists()
    metrics = pd.read_csv(tmp_path / "0" / "metrics.csv")
    steps = _steps_on(metrics, tmp_path / "0" / "steps.csv", "samples_seen")  # batch 10: 10 samples a step
    assert steps["samples_seen"].tolist() == pytest.approx([10.0 * i for i in range(1, 17)])


def test_runs_of_several_commands_get_a_table_each_with_only_their_columns(tmp_path, capsys):
    """A folder holding train and detect runs: report.md has a section per command, each with the columns its runs
    fill (no column of dashes); report.csv keeps the whole table."""
    fake_job(tmp_path / "0", {"model.width": 8}, ok(0.81, command="train"))
    fake_job(tmp_path / "1", {"model.width": 16}, ok(0.86, command="train"))
    detect = ["train_loss", "val_loss", "val_map50_nms", "val_map50_softnms"]
    fake_job(
        tmp_path / "2",
        {"data.n_train": 800},
        {
            "status": "ok",
            "command": "detect",
            "headline": detect,
            "train_loss": 0.5,
            "val_loss": 1.1,
            "val_map50_nms": 0.96,
            "val_map50_softnms": 0.97,
        },
    )
    table = report.main(tmp_path)
    assert set(table["Command"]) == {"train", "detect"}
    markdown = (tmp_path / "report.md").read_text()
    sections = {s.split("\n", 1)[0]: s for s in markdown.split("### ")[1:]}
    assert set(sections) == {"train", "detect"}
    train_header = sections["train"].splitlines()[2]
    detect_header = sections["detect"].splitlines()[2]
    assert "Width" in train_header and "Validation Accuracy" in train_header and "mAP" not in train_header
    assert "N Train" in detect_header and "Val mAP@0.5 NMS" in detect_header and "Width" not in detect_header
    assert "| - |" not in sections["detect"] and "| - |" not in sections["train"]
    assert len(pd.read_csv(tmp_path / "report.csv")) == 3
    out = capsys.readouterr().out
    assert out.count("jobs under") == 2  # one printed table per command
