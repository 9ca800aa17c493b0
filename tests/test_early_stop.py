"""Early stopping, best.pt and label smoothing: decisions checked against the rules written out here."""

from __future__ import annotations

import copy
import json
import signal

import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from helpers import TIMING

from nas_cli.engine.losses import cross_entropy
from nas_cli.engine.trainer import Trainer
from nas_cli.errors import UserError
from nas_cli.runs import checkpoint, signals

# a val_loss curve we control: with min_delta 0.05 only epochs 1 and 2 improve (0.78 and 0.76 miss 0.75)
SCRIPT = [1.0, 0.8, 0.78, 0.9, 0.76, 0.5, 0.4, 0.3]
EARLY = [
    "trainer.epochs=8",
    "trainer.early_stop.monitor=val_loss",
    "trainer.early_stop.patience=3",
    "trainer.early_stop.min_delta=0.05",
]


def expected_stop(losses: list[float], patience: int, min_delta: float) -> int | None:
    """The patience rule, by hand: the epoch (1-based) at which `patience` non-improving epochs in a row end."""
    best, bad = None, 0
    for epoch, value in enumerate(losses, 1):
        if best is None or value < best - min_delta:
            best, bad = value, 0
        else:
            bad += 1
        if bad >= patience:
            return epoch
    return None


@pytest.fixture
def scripted(monkeypatch):
    """Trainer.evaluate with val_loss taken from SCRIPT (call k = epoch k) and the weights of each epoch kept;
    ``scripted["signal_at"] = k`` sends SIGTERM during epoch k's evaluation."""
    real = Trainer.evaluate
    state = {"calls": 0, "weights": {}, "signal_at": None}

    def evaluate(self, model, loader, loss_fn=cross_entropy):
        figures = real(self, model, loader, loss_fn)
        state["calls"] += 1
        epoch = state["calls"]
        state["weights"][epoch] = copy.deepcopy(model.state_dict())
        if epoch == state["signal_at"]:
            signal.raise_signal(signal.SIGTERM)  # handled by the run: stops at the epoch's safe point
        return {**figures, "val_loss": SCRIPT[min(epoch, len(SCRIPT)) - 1]}

    monkeypatch.setattr(Trainer, "evaluate", evaluate)
    return state


def read(run_dir):
    return json.loads((run_dir / "summary.json").read_text()), pd.read_csv(run_dir / "metrics.csv")


def test_stops_where_the_patience_rule_says_and_keeps_the_best_weights(tmp_path, train_task, scripted):
    stop = expected_stop(SCRIPT, patience=3, min_delta=0.05)
    assert stop == 5
    train_task(tmp_path / "run", *EARLY)
    summary, rows = read(tmp_path / "run")
    assert summary["status"] == "ok" and summary["stopped_early"] is True
    assert summary["stopped_epoch"] == stop and list(rows["epoch"]) == list(range(1, stop + 1))
    assert "val_loss did not improve" in summary["stop_reason"] and "epoch 2" in summary["stop_reason"]
    # best.pt (trainer.best.monitor=score: val_acc, the first strict maximum) holds that epoch's weights
    best_epoch = int(rows["epoch"][rows["val_acc"].idxmax()])
    assert summary["best_epoch"] == best_epoch and summary["best_monitor"] == "val_acc"
    best = checkpoint.load(tmp_path / "run" / "best.pt")
    assert best["epoch"] == best_epoch
    for name, value in scripted["weights"][best_epoch].items():
        assert torch.equal(best["model"][name], value), name


def test_early_stop_survives_sigterm_and_resume(tmp_path, train_task, scripted):
    train_task(tmp_path / "full", *EARLY)
    scripted.update(calls=0, signal_at=4)  # epoch 4: two epochs into the patience window
    with pytest.raises((SystemExit, signals.Interrupted)):
        train_task(tmp_path / "cut", *EARLY)
    assert read(tmp_path / "cut")[0]["status"] == "interrupted"
    scripted["signal_at"] = None
    train_task(tmp_path / "cut", *EARLY, "resume=true")
    (full, full_rows), (cut, cut_rows) = read(tmp_path / "full"), read(tmp_path / "cut")
    assert cut["stopped_epoch"] == full["stopped_epoch"] == 5 and cut["best_epoch"] == full["best_epoch"]
    pd.testing.assert_frame_equal(full_rows.drop(columns=TIMING), cut_rows.drop(columns=TIMING), check_exact=True)


def test_a_monitor_that_is_not_a_column_is_a_one_line_error(tmp_path, train_task):
    with pytest.raises(UserError, match=r"trainer.early_stop.monitor=val_los is not a column .*val_loss"):
        train_task(tmp_path / "run", "trainer.epochs=1", "trainer.early_stop.monitor=val_los")


def test_init_from_best_loads_best_pt(tmp_path, train_task, scripted):
    train_task(tmp_path / "src", "trainer.epochs=4", "trainer.best.monitor=val_loss")  # SCRIPT: best at 3 of 4
    source = checkpoint.load(tmp_path / "src" / "best.pt")
    assert source["epoch"] == 3
    # optim.lr=0: the new run's parameters stay as loaded, so its model.pt shows which file init_from read
    train_task(
        tmp_path / "dst",
        "trainer.epochs=1",
        "optim.lr=0",
        f"init_from={tmp_path / 'src'}",
        "init_from_weights=best",
        "trainer.best.monitor=null",
    )
    loaded = checkpoint.load(tmp_path / "dst" / "model.pt")["model"]
    last = checkpoint.load(tmp_path / "src" / "model.pt")["model"]
    params = [k for k in loaded if "running" not in k and "num_batches" not in k]
    assert all(torch.equal(loaded[k], source["model"][k]) for k in params)
    assert not all(torch.equal(loaded[k], last[k]) for k in params)  # last would have been another file
    assert not (tmp_path / "dst" / "best.pt").exists()  # trainer.best.monitor=null: off


def test_best_missing_is_a_user_error(tmp_path):
    from nas_cli.engine.transfer import weights_file

    with pytest.raises(UserError, match="no best.pt"):
        weights_file(tmp_path, "best")
    with pytest.raises(UserError, match="last .* or best"):
        weights_file(tmp_path, "newest")


def test_label_smoothing_matches_the_smoothed_target_by_hand():
    torch.manual_seed(0)
    logits, y, eps = torch.randn(6, 4), torch.tensor([0, 1, 2, 3, 1, 0]), 0.1
    log_p = F.log_softmax(logits, 1)
    target = torch.full_like(log_p, eps / 4).scatter_(1, y[:, None], 1 - eps + eps / 4)
    by_hand = -(target * log_p).sum(1).mean()
    loss, out = cross_entropy(lambda x: x, logits, y, label_smoothing=eps)
    assert torch.allclose(loss, by_hand) and out is logits
