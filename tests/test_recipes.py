"""The training recipe book: each technique checked against an independent computation."""

from __future__ import annotations

import copy

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from helpers import TIMING, metrics, summary

from nas_cli.data.embedded import digits
from nas_cli.data.synthetic import synthetic
from nas_cli.engine import transfer
from nas_cli.engine.schedules import CyclicCosine, Plateau
from nas_cli.engine.trainer import Trainer
from nas_cli.errors import UserError
from nas_cli.models.cnn import SmallCNN
from nas_cli.models.mlp import MLP
from nas_cli.runs import checkpoint
from nas_cli.runs.lifecycle import Run


def quiet_fit(run_dir, epochs: int, *args, **kwargs) -> dict:
    """``Trainer.fit`` as a run of its own in ``run_dir``."""
    trainer = Trainer(epochs=epochs, device=torch.device("cpu"), progress=False)
    return trainer.fit(*args, run=Run(run_dir, "train", seed=None, device="cpu"), **kwargs)


def tiny_data(seed=0):
    return synthetic(shape=[1, 6, 6], num_classes=3, n_train=96, n_val=30, batch_size=16, noise=0.5, seed=seed)


def test_ema_weights_equal_a_hand_computed_ema(tmp_path):
    torch.manual_seed(0)
    model = MLP((1, 6, 6), 3, width=8, depth=1)
    twin = copy.deepcopy(model)
    decay = 0.9
    quiet_fit(
        tmp_path,
        2,
        model,
        torch.optim.SGD(model.parameters(), lr=0.1),
        tiny_data().train,
        tiny_data().val,
        generator=tiny_data().generator,
        ema_decay=decay,
    )
    # the same steps by hand: identical init, identical batch order
    data = tiny_data()
    opt = torch.optim.SGD(twin.parameters(), lr=0.1)
    average = [p.detach().clone() for p in twin.parameters()]
    for _ in range(2):
        for x, y in data.train:
            opt.zero_grad()
            F.cross_entropy(twin(x), y).backward()
            opt.step()
            average = [decay * a + (1 - decay) * p.detach() for a, p in zip(average, twin.parameters())]
    saved = checkpoint.load(tmp_path / "model_ema.pt")["model"]
    names = [n for n, _ in twin.named_parameters()]
    for name, expected in zip(names, average):
        torch.testing.assert_close(saved[name], expected, rtol=1e-5, atol=1e-6)
    rows = metrics(tmp_path)
    assert {"val_acc_ema", "val_loss_ema"} <= set(rows.columns)


def test_polyak_is_the_running_mean_of_iterates(tmp_path):
    torch.manual_seed(0)
    model = MLP((1, 6, 6), 3, width=4, depth=0)
    twin = copy.deepcopy(model)
    quiet_fit(
        tmp_path,
        1,
        model,
        torch.optim.SGD(model.parameters(), lr=0.1),
        tiny_data().train,
        tiny_data().val,
        generator=tiny_data().generator,
        ema_decay="polyak",
    )
    opt = torch.optim.SGD(twin.parameters(), lr=0.1)
    iterates = []  # the running mean starts with the weights after the first step
    for x, y in tiny_data().train:
        opt.zero_grad()
        F.cross_entropy(twin(x), y).backward()
        opt.step()
        iterates.append([p.detach().clone() for p in twin.parameters()])
    mean = [torch.stack(ps).mean(0) for ps in zip(*iterates)]
    saved = checkpoint.load(tmp_path / "model_ema.pt")["model"]
    for (name, _), expected in zip(twin.named_parameters(), mean):
        torch.testing.assert_close(saved[name], expected, rtol=1e-5, atol=1e-6)


def test_snapshot_ensemble_count_and_accuracy_recomputed(tmp_path, train_task):
    result = train_task(tmp_path, "sched=cyclic_cosine", "sched.cycles=3", "trainer.epochs=6", "optim.lr=0.01")
    files = sorted((tmp_path / "snapshots").glob("*.pt"))
    assert [f.name for f in files] == ["epoch_2.pt", "epoch_4.pt", "epoch_6.pt"]
    assert result["snapshots"] == 3
    # independent: load each snapshot, average the softmax, score the validation set
    data = synthetic(shape=[1, 12, 12], n_train=256, n_val=64, batch_size=32, noise=0.5)
    probs = 0
    for f in files:
        model = SmallCNN((1, 12, 12), 10, width=8, hidden=32).eval()
        model.load_state_dict(checkpoint.load(f)["model"])
        with torch.no_grad():
            probs = probs + torch.cat([model(x).softmax(1) for x, _ in data.val]) / len(files)
    labels = torch.cat([y for _, y in data.val])
    assert result["snapshot_ensemble_val_acc"] == pytest.approx((probs.argmax(1) == labels).float().mean().item())
    lr = metrics(tmp_path)["lr"]
    assert lr.iloc[1] < 0.002 and lr.iloc[2] > 0.005  # each cycle ends low, the next restarts high


def test_independent_ensemble_members_and_ensemble_accuracy(tmp_path, train_task):
    result = train_task(tmp_path, "ensemble.size=3", "trainer.epochs=2")
    members = [tmp_path / "members" / str(k) for k in range(3)]
    assert [summary(m)["seed"] for m in members] == [0, 1, 2]
    data = synthetic(shape=[1, 12, 12], n_train=256, n_val=64, batch_size=32, noise=0.5)
    probs = 0
    for m in members:
        model = SmallCNN((1, 12, 12), 10, width=8, hidden=32).eval()
        model.load_state_dict(checkpoint.load(m / "model.pt")["model"])
        with torch.no_grad():
            probs = probs + torch.cat([model(x).softmax(1) for x, _ in data.val])
    labels = torch.cat([y for _, y in data.val])
    assert result["ensemble_val_acc"] == pytest.approx((probs.argmax(1) == labels).float().mean().item())
    accs = [summary(m)["final_val_acc"] for m in members]
    assert result["final_val_acc"] == pytest.approx(np.mean(accs))
    assert pd.read_csv(tmp_path / "members.csv")["seed"].tolist() == [0, 1, 2]
    from nas_cli.report.collect import collect

    frame, _, _ = collect(tmp_path)
    assert len(frame) == 1  # members belong to the run, not to the table


def test_transfer_replaces_the_head_and_frozen_weights_stay_bit_for_bit(tmp_path, train_task):
    train_task(tmp_path / "source", "trainer.epochs=1")
    source = checkpoint.load(tmp_path / "source" / "model.pt")["model"]
    train_task(
        tmp_path / "target",
        f"init_from={tmp_path / 'source'}",
        "freeze=all_but_head",
        "data.num_classes=4",
        "trainer.epochs=2",
    )
    tuned = checkpoint.load(tmp_path / "target" / "model.pt")["model"]
    head = transfer.head_name(SmallCNN((1, 12, 12), 4, width=8, hidden=32))
    for name, value in tuned.items():
        if name.startswith(head + "."):
            assert value.shape[0] == 4  # the new 4-class head
        elif "num_batches_tracked" not in name:
            assert torch.equal(value, source[name]), name  # frozen, running statistics included


def test_load_pretrained_lists_what_it_skipped(tmp_path):
    torch.manual_seed(0)
    source = SmallCNN((1, 12, 12), 10, width=8, hidden=32)
    checkpoint.save(tmp_path / "w.pt", {"model": source.state_dict()})
    target = SmallCNN((1, 12, 12), 4, width=8, hidden=32)
    report = transfer.load_pretrained(target, tmp_path / "w.pt")
    head = transfer.head_name(target)
    assert report["reshaped"] == [f"{head}.bias", f"{head}.weight"]
    assert report["missing"] == [] and report["unexpected"] == []
    with pytest.raises(UserError, match="no parameter name starts with"):
        transfer.freeze(target, ["nonexistent"])


def test_backbone_gets_a_smaller_lr():
    model = SmallCNN((1, 12, 12), 4, width=8, hidden=32)
    opt = torch.optim.SGD(transfer.param_groups(model, 0.1), lr=0.5)
    transfer.apply_lr_scale(opt)
    head = transfer.head_name(model)
    head_params = {id(p) for n, p in model.named_parameters() if n.startswith(head + ".")}
    for group in opt.param_groups:
        is_head = all(id(p) in head_params for p in group["params"])
        assert group["lr"] == pytest.approx(0.5 if is_head else 0.05)


def full_batch_loss(model, data) -> float:
    batches = list(data.train)  # one pass: every pass is shuffled anew
    with torch.no_grad():
        x, y = torch.cat([b[0] for b in batches]), torch.cat([b[1] for b in batches])
        return F.cross_entropy(model.eval()(x), y).item()


def test_lbfgs_beats_one_epoch_of_sgd_on_logistic_regression(tmp_path, train_task):
    common = ["data=digits", "model=mlp", "model.depth=0", "trainer.epochs=1", "sched=none"]
    train_task(tmp_path / "sgd", *common, "optim=sgd", "optim.lr=0.1", "optim.momentum=0")
    train_task(tmp_path / "lbfgs", *common, "optim=lbfgs", "optim.max_iter=50", "data.batch_size=64")
    data = digits()
    losses = {}
    for name in ("sgd", "lbfgs"):
        model = MLP((1, 8, 8), 10, depth=0)
        model.load_state_dict(checkpoint.load(tmp_path / name / "model.pt")["model"])
        losses[name] = full_batch_loss(model, data)
    assert losses["lbfgs"] < losses["sgd"]
    assert metrics(tmp_path / "lbfgs")["iterations"].tolist() == [1]  # one full-batch step per epoch


@pytest.mark.parametrize(
    "extra, message",
    [
        (["model.dropout=0.5"], "deterministic loss"),
        (["trainer.precision=bf16"], "cannot be combined"),
        (["optim.weight_decay=0.1"], "regularizer.l2"),
    ],
)
def test_lbfgs_refuses_what_it_cannot_do(tmp_path, train_task, extra, message):
    with pytest.raises(Exception) as info:
        train_task(
            tmp_path, "optim=lbfgs", *(["+optim.weight_decay=0.1"] if "optim.weight_decay=0.1" in extra else extra)
        )
    chain, cur = [], info.value
    while cur is not None:
        chain.append(str(cur))
        cur = cur.__cause__
    assert any(message in text for text in chain)


def test_l2_penalty_equals_weight_decay_for_plain_sgd(tmp_path, train_task):
    base = ["optim=sgd", "optim.momentum=0", "optim.lr=0.05", "model.batchnorm=false", "trainer.epochs=2"]
    train_task(tmp_path / "wd", *base, "optim.weight_decay=0.01")
    train_task(tmp_path / "l2", *base, "regularizer.l2=0.01")
    wd = checkpoint.load(tmp_path / "wd" / "model.pt")["model"]
    l2 = checkpoint.load(tmp_path / "l2" / "model.pt")["model"]
    for name in wd:
        torch.testing.assert_close(wd[name], l2[name], rtol=1e-4, atol=1e-6)
    rows = metrics(tmp_path / "l2")
    assert "train_penalty" in rows and (rows["train_penalty"] > 0).all()
    assert "train_penalty" not in metrics(tmp_path / "wd")
    # train_loss stays the data loss: equal between the two runs up to float noise
    np.testing.assert_allclose(rows["train_loss"], metrics(tmp_path / "wd")["train_loss"], rtol=1e-4)


def test_plateau_cuts_the_lr_after_patience():
    schedule = Plateau(factor=0.5, patience=1)
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
    sched = schedule.build(opt, steps_per_epoch=1, epochs=10)
    seen = []
    for val_loss in [1.0, 0.9, 0.95, 0.95, 0.95, 0.95, 0.8]:
        opt.step()
        sched.step()
        seen.append(opt.param_groups[0]["lr"])
        schedule.epoch_end({"val_loss": val_loss})
    # no improvement after 0.9 for 2 epochs (> patience 1): halve, then again two epochs later
    assert seen == [1.0, 1.0, 1.0, 1.0, 0.5, 0.5, 0.25]
    assert schedule.state_dict() == {"scale": 0.25, "best": 0.8, "bad_epochs": 0}


def test_cyclic_cosine_restarts_each_cycle():
    schedule = CyclicCosine(cycles=2)
    assert [schedule.cycle_ends(e, 6) for e in range(1, 7)] == [False, False, True, False, False, True]
    assert schedule.factor(0, 6) == pytest.approx(1.0) and schedule.factor(3, 6) == pytest.approx(1.0)
    assert schedule.factor(1.5, 6) == pytest.approx(0.5)


def test_smoothed_loss_curves_match_their_definitions(tmp_path, train_task):
    train_task(tmp_path, "trainer.loss_window=5", "trainer.loss_ema=0.2")
    steps = pd.read_csv(tmp_path / "steps.csv")
    rows = metrics(tmp_path)
    assert len(steps) == rows["iterations"].iloc[-1]
    loss = steps["loss"].to_numpy()
    sma = [loss[max(0, i - 4) : i + 1].mean() for i in range(len(loss))]
    cma = np.cumsum(loss) / np.arange(1, len(loss) + 1)
    ema, num, den = [], 0.0, 0.0
    for value in loss:  # bias-corrected EMA
        num, den = 0.8 * num + value, 0.8 * den + 1
        ema.append(num / den)
    np.testing.assert_allclose(steps["loss_sma"], sma, rtol=1e-9)
    np.testing.assert_allclose(steps["loss_cma"], cma, rtol=1e-9)
    np.testing.assert_allclose(steps["loss_ema"], ema, rtol=1e-9)
    ends = steps.set_index("iteration").loc[rows["iterations"]]
    np.testing.assert_allclose(rows["train_loss_ema"], ends["loss_ema"], rtol=1e-9)


@pytest.mark.parametrize(
    "recipe",
    [
        ["ema.decay=0.9", "sched=cyclic_cosine", "sched.cycles=2"],
        ["sched=plateau", "sched.patience=0", "regularizer.l2=1e-3"],
    ],
)
def test_resume_is_exact_with_averaging_snapshots_and_plateau(tmp_path, train_task, monkeypatch, recipe):
    recipe = [*recipe, "trainer.epochs=4"]
    train_task(tmp_path / "full", *recipe)
    calls = {"n": 0}
    real = Trainer.evaluate

    per_epoch = 2 if "ema.decay=0.9" in recipe else 1  # the EMA model is evaluated too

    def crash_in_epoch_3(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2 * per_epoch + 1:
            raise KeyboardInterrupt
        return real(self, *args, **kwargs)

    monkeypatch.setattr(Trainer, "evaluate", crash_in_epoch_3)
    with pytest.raises(KeyboardInterrupt):
        train_task(tmp_path / "cut", *recipe)
    monkeypatch.setattr(Trainer, "evaluate", real)
    assert checkpoint.load(tmp_path / "cut" / "checkpoints" / "last.pt")["epoch"] == 2
    train_task(tmp_path / "cut", *recipe, "resume=true")
    full, resumed = (metrics(tmp_path / x).drop(columns=TIMING) for x in ("full", "cut"))
    pd.testing.assert_frame_equal(full, resumed, check_exact=True)
    pd.testing.assert_frame_equal(
        pd.read_csv(tmp_path / "full" / "steps.csv"), pd.read_csv(tmp_path / "cut" / "steps.csv"), check_exact=True
    )
