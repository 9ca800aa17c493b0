"""The real command line, in subprocesses: help, run folders, sweeps + report, errors."""

from __future__ import annotations

import json

import pandas as pd
import pytest
from helpers import TINY, cli, summary

SMALL = [a for a in TINY if not a.startswith("trainer.epochs")] + ["trainer.epochs=2"]


def test_top_level_help_lists_every_command(tmp_path):
    out = cli("--help", cwd=tmp_path)
    assert out.returncode == 0
    for command in ("train", "report"):
        assert command in out.stdout


def test_train_help_is_hydras_and_lists_config_groups(tmp_path):
    out = cli("train", "--help", cwd=tmp_path)
    assert out.returncode == 0
    groups = dict(line.split(": ", 1) for line in out.stdout.splitlines() if ": " in line and "," in line)
    assert {"cnn", "mlp", "resnet18", "xnor_resnet18"} <= set(groups["model"].split(", "))
    assert set(groups["optim"].split(", ")) == {"adagrad", "adam", "adamw", "lbfgs", "nesterov", "rmsprop", "sgd"}
    assert not (tmp_path / "outputs").exists()


@pytest.mark.slow
def test_cfg_job_prints_the_composed_config(tmp_path):
    out = cli("train", "--cfg", "job", "model=resnet18", "model.width=8", cwd=tmp_path)
    assert out.returncode == 0
    assert "_target_: nas_cli.models.resnet.resnet18" in out.stdout and "width: 8" in out.stdout


@pytest.mark.slow
def test_single_run_writes_its_record_under_outputs_train_runs(tmp_path):
    out = cli("train", *SMALL, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    (run,) = (tmp_path / "outputs" / "train" / "runs").iterdir()
    for name in ("metrics.csv", "summary.json", "checkpoints/last.pt", "model.pt", ".hydra/config.yaml", "train.log"):
        assert (run / name).exists(), name
    assert summary(run)["status"] == "ok"
    assert "epoch 2/2" in (run / "train.log").read_text()


@pytest.mark.slow
def test_multirun_then_report_gives_the_sweep_table(tmp_path):
    sweep = tmp_path / "sweep"
    out = cli(
        "train", "-m", *SMALL, "model.width=4,8", "optim.weight_decay=0,1e-4", f"hydra.sweep.dir={sweep}", cwd=tmp_path
    )
    assert out.returncode == 0, out.stderr
    jobs = sorted(p for p in sweep.iterdir() if p.is_dir())
    assert [p.name for p in jobs] == ["0", "1", "2", "3"]

    out = cli("report", str(sweep), cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    table = pd.read_csv(sweep / "report.csv", dtype=str)
    assert list(table.columns) == ["Width", "Weight Decay", "Training Loss", "Training Accuracy", "Validation Accuracy"]
    assert len(table) == 4
    for job in jobs:  # every cell is that job's own last-N mean, read independently
        record = json.loads((job / "summary.json").read_text())
        overrides = (job / ".hydra" / "overrides.yaml").read_text()
        width = "4" if "model.width=4" in overrides else "8"
        wd = "0" if "optim.weight_decay=0\n" in overrides else "0.0001"
        row = table[(table["Width"] == width) & (table["Weight Decay"] == wd)]
        assert len(row) == 1
        assert float(row["Validation Accuracy"].iloc[0]) == pytest.approx(record["val_acc"], abs=5e-5)
        assert float(row["Training Loss"].iloc[0]) == pytest.approx(record["train_loss"], abs=5e-6)
    assert (sweep / "report.md").read_text().startswith("| Width | Weight Decay | Training Loss |")

    out = cli(
        "report",
        str(sweep),
        "--rows",
        "model.width",
        "--cols",
        "optim.weight_decay",
        "--value",
        "val_acc",
        cwd=tmp_path,
    )
    assert out.returncode == 0, out.stderr
    grid = pd.read_csv(sweep / "report.csv", dtype=str)
    assert list(grid.columns) == ["Width", "0", "0.0001"] and grid["Width"].tolist() == ["4", "8"]

    out = cli("report", str(sweep), "--rows", "model.width", cwd=tmp_path)  # one key: the mean over the others
    assert out.returncode == 0, out.stderr
    table = pd.read_csv(sweep / "report.csv", dtype=str)
    assert list(table.columns) == ["Width", "Validation Accuracy"] and table["Width"].tolist() == ["4", "8"]
    for width, cell in zip((4, 8), table["Validation Accuracy"]):
        accs = [
            json.loads((j / "summary.json").read_text())["val_acc"]
            for j in jobs
            if f"model.width={width}\n" in (j / ".hydra" / "overrides.yaml").read_text()
        ]
        assert len(accs) == 2 and float(cell) == pytest.approx(sum(accs) / 2, abs=5e-5)


@pytest.mark.slow
def test_joblib_launcher_runs_the_sweep_in_parallel_processes(tmp_path):
    sweep = tmp_path / "sweep"
    out = cli(
        "train",
        "-m",
        "hydra/launcher=joblib",
        "hydra.launcher.n_jobs=2",
        *SMALL,
        "seed=0,1",
        f"hydra.sweep.dir={sweep}",
        cwd=tmp_path,
    )
    assert out.returncode == 0, out.stderr
    assert {summary(sweep / j)["seed"] for j in ("0", "1")} == {0, 1}


ERRORS = {
    "unknown key": (["train", "foo=1"], "foo: nas-cli train has no such key"),
    "a typo of a key": (["train", "optim.lrr=0.1"], "did you mean optim.lr"),
    "unknown group option": (
        ["train", "model=transformer"],
        "model=transformer: nas-cli train has no such model option",
    ),
    "missing cifar folder": (
        ["train", "data=cifar10", "data.root=nowhere"],
        "CIFAR-10 not found: nowhere/cifar-10-batches-py lacks data_batch_1",
    ),
    "missing image folder": (["train", "data=imagefolder", "data.root=nowhere"], "nowhere/train' not found"),
    "root not given": (["train", "data=imagefolder"], "data.root has no default"),
    "bad value": (["train", "trainer.epochs=many"], "trainer.epochs=many: expected a whole number ≥ 1"),
    "no gpu": (["train", "device=cuda"], "no CUDA GPU"),
    "nothing to resume": (["train", "resume=true"], "no interrupted run"),
    "report of nothing": (["report", "nowhere"], "no such folder"),
    "a typo of a search key": (
        ["search-darts", "search.order=second"],
        "search.order: nas-cli search-darts has no such key, and nothing would read it; did you mean arch.order",
    ),
    "threads of zero": (["dqn", "threads=0"], "threads=0: expected a whole number ≥ 1 or null"),
    "a seed that is no number": (["grad-bench", "seed=abc"], "seed=abc: expected a whole number"),
    "resume of no run": (["fuse-bn", "resume=nowhere"], "resume=nowhere: not a run folder"),
    "lbfgs for dqn": (["dqn", "optim=lbfgs"], "optim=lbfgs needs a fixed data set"),
}


@pytest.mark.slow
@pytest.mark.parametrize("case", list(ERRORS))
def test_user_errors_are_one_line_with_nonzero_exit(tmp_path, case):
    args, message = ERRORS[case]
    out = cli(*args, cwd=tmp_path)
    lines = [ln for ln in out.stderr.splitlines() if ln.strip()]
    assert out.returncode == 2
    assert len(lines) == 1 and lines[0].startswith("error: "), out.stderr
    assert message in lines[0]
    assert "Traceback" not in out.stdout + out.stderr


@pytest.mark.slow
def test_corrupt_checkpoint_is_one_line_and_left_in_place(tmp_path):
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "checkpoints" / "last.pt").write_bytes(b"not a checkpoint")
    out = cli("train", *SMALL, f"resume={run}", cwd=tmp_path)
    lines = [ln for ln in out.stderr.splitlines() if ln.strip()]
    assert out.returncode == 2 and len(lines) == 1
    assert "damaged or not a checkpoint" in lines[0]
    assert (run / "checkpoints" / "last.pt").read_bytes() == b"not a checkpoint"
    assert not (run / "metrics.csv").exists() and not (run / "summary.json").exists()


@pytest.mark.slow
def test_full_error_env_shows_the_traceback(tmp_path):
    out = cli("train", "data=cifar10", "data.root=nowhere", cwd=tmp_path, env={"HYDRA_FULL_ERROR": "1"})
    assert out.returncode != 0 and "Traceback" in out.stderr


@pytest.mark.slow
def test_resume_true_continues_the_latest_interrupted_run_with_its_overrides(tmp_path):
    out = cli("train", *SMALL, "trainer.epochs=3", "seed=7", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    (run,) = (tmp_path / "outputs" / "train" / "runs").iterdir()
    full = pd.read_csv(run / "metrics.csv")
    # make it look interrupted after epoch 3 of 5: status not ok, then ask for more epochs
    record = summary(run)
    record["status"] = "interrupted"
    (run / "summary.json").write_text(json.dumps(record))
    out = cli("train", "resume=true", "trainer.epochs=5", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert [p.name for p in (tmp_path / "outputs" / "train" / "runs").iterdir()] == [run.name]
    resumed = pd.read_csv(run / "metrics.csv")
    assert resumed["epoch"].tolist() == [1, 2, 3, 4, 5]
    pd.testing.assert_frame_equal(resumed.head(3), full)
    assert summary(run)["seed"] == 7 and summary(run)["status"] == "ok"


@pytest.mark.slow
def test_a_sweep_over_recipe_options_is_tabulated(tmp_path):
    sweep = tmp_path / "sweep"
    out = cli(
        "train", "-m", *SMALL, "ema.decay=0.5,0.9", "regularizer.l2=0,1e-3", f"hydra.sweep.dir={sweep}", cwd=tmp_path
    )
    assert out.returncode == 0, out.stderr
    out = cli(
        "report",
        str(sweep),
        "--rows",
        "ema.decay",
        "--cols",
        "regularizer.l2",
        "--value",
        "val_acc_ema",
        "--plot",
        cwd=tmp_path,
    )
    assert out.returncode == 0, out.stderr
    grid = pd.read_csv(sweep / "report.csv", dtype=str)
    assert list(grid.columns) == ["Decay", "0", "0.001"] and grid["Decay"].tolist() == ["0.5", "0.9"]
    job = next(
        j
        for j in sweep.iterdir()
        if j.is_dir() and "ema.decay=0.9\n- regularizer.l2=0.001" in (j / ".hydra" / "overrides.yaml").read_text()
    )
    assert float(grid.loc[1, "0.001"]) == pytest.approx(summary(job)["val_acc_ema"], abs=5e-5)
    assert (sweep / "curves.png").is_file()


@pytest.mark.slow
def test_an_interrupted_sweep_job_shows_its_last_epoch_in_the_report(tmp_path):
    """A job stopped by SIGTERM mid-sweep keeps its row: its figures from the last metrics.csv row, its status."""
    sweep = tmp_path / "sweep"
    out = cli("train", "-m", *SMALL, "trainer.epochs=3", "model.width=4,8", f"hydra.sweep.dir={sweep}", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    cut = sweep / "1"
    record = summary(cut)
    record.update(status="interrupted", epochs=2)
    for key in ("train_loss", "train_acc", "val_acc"):
        del record[key]  # as a run stopped before its summary had figures
    (cut / "summary.json").write_text(json.dumps(record))
    rows = pd.read_csv(cut / "metrics.csv").head(2)
    rows.to_csv(cut / "metrics.csv", index=False)
    out = cli("report", str(sweep), cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    table = pd.read_csv(sweep / "report.csv", dtype=str).set_index("Width")
    assert table.loc["8", "Status"] == "interrupted" and table.loc["4", "Status"] == "ok"
    assert float(table.loc["8", "Validation Accuracy"]) == pytest.approx(rows["val_acc"].iloc[-1], abs=5e-5)
    assert float(table.loc["8", "Training Loss"]) == pytest.approx(rows["train_loss"].iloc[-1], abs=5e-6)
