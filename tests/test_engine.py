"""The training engine through the train task: run record, determinism, resume, divergence."""

from __future__ import annotations

import math

import pandas as pd
import pytest
import torch
from helpers import TIMING, metrics, summary

from nas_cli.engine.trainer import Trainer
from nas_cli.runs import checkpoint


def test_run_record_is_complete_and_consistent(tmp_path, train_task):
    result = train_task(tmp_path, "trainer.epochs=4", "trainer.last_n=3")
    rows = metrics(tmp_path)
    assert list(rows.columns) == [
        "epoch",
        "train_loss",
        "train_acc",
        "val_loss",
        "val_acc",
        "lr",
        "iterations",
        "samples_seen",
        "train_loss_sma",
        "train_loss_cma",
        "train_loss_ema",
        "epoch_time_s",
        "samples_per_s",
    ]
    assert rows["epoch"].tolist() == [1, 2, 3, 4]
    # 256 samples in batches of 32: 8 iterations an epoch
    assert rows["iterations"].tolist() == [8, 16, 24, 32]
    assert rows["samples_seen"].tolist() == [256, 512, 768, 1024]
    on_disk = summary(tmp_path)
    assert on_disk == result and on_disk["status"] == "ok"
    assert on_disk["last_n"] == 3
    for key in ("train_loss", "train_acc", "val_loss", "val_acc"):
        assert on_disk[key] == pytest.approx(rows[key].tail(3).mean())
        assert on_disk[f"final_{key}"] == pytest.approx(rows[key].iloc[-1])
    assert on_disk["best_val_acc"] == pytest.approx(rows["val_acc"].max())
    assert on_disk["device"] == "cpu" and on_disk["gpu_hours"] == 0.0
    assert on_disk["device_hours"] == pytest.approx(on_disk["wall_time_s"] / 3600)
    assert on_disk["seed"] == 0 and "torch" in on_disk["versions"]
    assert (tmp_path / "checkpoints" / "last.pt").is_file() and (tmp_path / "model.pt").is_file()
    assert not list(tmp_path.rglob("*.tmp")), "atomic writes leave no temporary files"
    # the learnable synthetic task is actually learned
    assert rows["val_acc"].iloc[-1] > 0.9


def test_same_seed_same_metrics_other_seed_differs(tmp_path, train_task):
    train_task(tmp_path / "a", "seed=3")
    train_task(tmp_path / "b", "seed=3")
    train_task(tmp_path / "c", "seed=4")
    a, b, c = (metrics(tmp_path / x).drop(columns=TIMING) for x in "abc")
    pd.testing.assert_frame_equal(a, b, check_exact=True)
    assert not a["train_loss"].equals(c["train_loss"])


def test_interrupted_run_resumes_to_identical_metrics(tmp_path, train_task, monkeypatch):
    epochs = ["trainer.epochs=4", "sched=cosine", "model.dropout=0.2"]  # dropout: the RNG state matters
    train_task(tmp_path / "full", *epochs)

    calls = {"n": 0}
    real_evaluate = Trainer.evaluate

    def evaluate_then_crash(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:  # during epoch 3, after two checkpoints
            raise KeyboardInterrupt
        return real_evaluate(self, *args, **kwargs)

    monkeypatch.setattr(Trainer, "evaluate", evaluate_then_crash)
    with pytest.raises(KeyboardInterrupt):
        train_task(tmp_path / "cut", *epochs)
    assert summary(tmp_path / "cut")["status"] == "interrupted"
    assert checkpoint.load(tmp_path / "cut" / "checkpoints" / "last.pt")["epoch"] == 2
    monkeypatch.setattr(Trainer, "evaluate", real_evaluate)

    train_task(tmp_path / "cut", *epochs, "resume=true")
    full, resumed = (metrics(tmp_path / x).drop(columns=TIMING) for x in ("full", "cut"))
    pd.testing.assert_frame_equal(full, resumed, check_exact=True)
    assert summary(tmp_path / "cut")["status"] == "ok"


def test_nan_loss_marks_the_run_diverged_and_keeps_metrics(tmp_path, train_task):
    result = train_task(tmp_path, "optim=sgd", "optim.lr=1e30", "trainer.epochs=5")
    rows = metrics(tmp_path)
    assert result["status"] == "diverged" == summary(tmp_path)["status"]
    assert len(rows) < 5 and not math.isfinite(rows["train_loss"].iloc[-1])
    assert not (tmp_path / "model.pt").exists()
    # the last checkpoint (if any) holds finite weights, never the diverged ones
    ckpt = tmp_path / "checkpoints" / "last.pt"
    if ckpt.exists():
        state = checkpoint.load(ckpt)
        assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)])
@pytest.mark.parametrize("optim", ["sgd", "nesterov", "adagrad", "rmsprop", "adam", "adamw"])
def test_every_optimizer_trains(tmp_path, train_task, optim, device):
    lr = {"sgd": 0.05, "nesterov": 0.05, "adagrad": 0.05}.get(optim, 0.003)
    # on the GPU the model is there before its optimizer is built (Adagrad makes its state at once)
    result = train_task(tmp_path, f"optim={optim}", f"optim.lr={lr}", "optim.weight_decay=1e-4", f"device={device}")
    rows = metrics(tmp_path)
    assert result["status"] == "ok"
    assert rows["train_loss"].iloc[-1] < rows["train_loss"].iloc[0]


def test_failure_is_recorded_with_status_failed(tmp_path, train_task, monkeypatch):
    def broken(self, *args, **kwargs):
        raise RuntimeError("out of memory (simulated)")

    monkeypatch.setattr(Trainer, "evaluate", broken)
    with pytest.raises(RuntimeError):
        train_task(tmp_path)
    record = summary(tmp_path)
    assert record["status"] == "failed" and "out of memory" in record["error"]


@pytest.mark.gpu
def test_cuda_fp16_channels_last_path(tmp_path, train_task):
    result = train_task(
        tmp_path, "device=cuda", "trainer.precision=fp16", "trainer.channels_last=true", "ema.decay=0.9"
    )
    assert result["status"] == "ok" and result["device"].startswith("cuda") and result["gpu_hours"] > 0


def test_bf16_autocast_trains_on_cpu(tmp_path, train_task):
    result = train_task(tmp_path, "trainer.precision=bf16", "device=cpu")
    assert result["status"] == "ok"
    assert metrics(tmp_path)["train_loss"].iloc[-1] < metrics(tmp_path)["train_loss"].iloc[0]


def test_fp16_on_cpu_is_a_noted_no_op_and_deterministic_mode_runs(tmp_path, train_task, caplog):
    train_task(tmp_path / "fp32", "device=cpu")
    with caplog.at_level("WARNING"):
        train_task(tmp_path / "fp16", "device=cpu", "trainer.precision=fp16", "trainer.deterministic=true")
    assert "running fp32 here" in caplog.text
    pd.testing.assert_frame_equal(
        metrics(tmp_path / "fp32").drop(columns=TIMING),
        metrics(tmp_path / "fp16").drop(columns=TIMING),
        check_exact=True,
    )


def test_progress_ticks_reach_rich_in_bursts_and_none_is_lost(monkeypatch):
    import io

    import rich
    from rich.console import Console

    from nas_cli.engine import progress as progress_module

    monkeypatch.setattr(rich, "_console", Console(file=io.StringIO(), force_terminal=True))
    bar = progress_module.TrainingProgress(True)
    with bar:
        task = bar.add_task("batches", total=300, info="")
        monkeypatch.setattr(progress_module, "REDRAW_EVERY_S", 1e12)  # no redraw is ever due
        for _ in range(100):
            bar.tick(task)
        assert bar.tasks[0].completed == 0  # rich has not been told yet
        monkeypatch.setattr(progress_module, "REDRAW_EVERY_S", -1.0)  # every tick redraws
        bar.tick(task)
        assert bar.tasks[0].completed == 101
        bar.reset(task, total=300)
        bar.tick(task)
        assert bar.tasks[0].completed == 1
