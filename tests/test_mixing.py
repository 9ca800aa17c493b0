"""Top-5 accuracy and MixUp/CutMix of training batches (data.augment.mixup_alpha / cutmix_alpha).

The mixing ops are checked against torchvision's v2.MixUp / v2.CutMix replayed with the same
lambda and box (v2 draws from the global RNG, ours from the loader's generators); top-5 against
a count written out by hand.
"""

from __future__ import annotations

import math
import signal

import pandas as pd
import pytest
import torch
from torch import nn

from nas_cli.data.augment import MixCollate, Mixing, build_augment, cutmix_box
from nas_cli.data.bundle import TensorLoader
from nas_cli.data.synthetic import synthetic
from nas_cli.engine.losses import cross_entropy
from nas_cli.engine.trainer import Trainer, hits
from nas_cli.errors import UserError
from nas_cli.runs import checkpoint, signals
from nas_cli.runs.lifecycle import Run

CPU = torch.device("cpu")


def top5_by_hand(logits: torch.Tensor, labels: torch.Tensor) -> int:
    """A label is in the top 5 when fewer than 5 classes score strictly higher (no ties in random logits)."""
    return sum(int((row > row[label]).sum()) < 5 for row, label in zip(logits, labels.tolist()))


def test_top5_count_matches_a_hand_count_and_only_above_10_classes():
    g = torch.Generator().manual_seed(0)
    logits, labels = torch.randn(37, 20, generator=g), torch.randint(0, 20, (37,), generator=g)
    top1, top5 = hits(logits, labels)
    assert int(top5) == top5_by_hand(logits, labels) and int(top1) == sum(
        int(row.argmax()) == label for row, label in zip(logits, labels.tolist())
    )
    assert hits(logits[:, :10], labels % 10)[1] is None  # 10 classes: top-5 would say little
    soft = nn.functional.one_hot(labels, 20).float() * 0.7 + nn.functional.one_hot(labels.roll(1), 20).float() * 0.3
    assert int(hits(logits, soft)[1]) == int(top5)  # soft labels count against their dominant class


def test_evaluate_records_val_acc5_for_many_classes_only():
    g = torch.Generator().manual_seed(1)
    model = nn.Linear(6, 12)
    batches = [(torch.randn(9, 6, generator=g), torch.randint(0, 12, (9,), generator=g)) for _ in range(3)]
    figures = Trainer(epochs=1, device=CPU, progress=False).evaluate(model, batches, cross_entropy)
    with torch.no_grad():
        expected = sum(top5_by_hand(model(x), y) for x, y in batches) / 27
    assert figures["val_acc5"] == pytest.approx(expected)
    few = Trainer(epochs=1, device=CPU, progress=False).evaluate(nn.Linear(6, 10), [(x, y % 10) for x, y in batches])
    assert "val_acc5" not in few


def batch(seed: int = 0, n: int = 6, classes: int = 5):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, 10, 14, generator=g), torch.randint(0, classes, (n,), generator=g)


def test_mixup_is_v2_mixup_with_the_same_lambda():
    from torchvision.transforms import v2

    x, y = batch()
    mixing = Mixing(mixup_alpha=0.4)
    draws = mixing.draw(10, 14, generator=torch.Generator().manual_seed(3))
    mixed, soft = mixing.apply(x, y, 5, draws)
    reference = v2.MixUp(alpha=0.4, num_classes=5)
    reference.make_params = lambda flat: {"lam": float(draws.mixup_lam)}
    want_x, want_y = reference(x.clone(), y)
    torch.testing.assert_close(mixed, want_x, rtol=0, atol=1e-6)
    torch.testing.assert_close(soft, want_y, rtol=0, atol=1e-6)
    assert 0 < float(draws.mixup_lam) < 1


def test_cutmix_is_v2_cutmix_with_the_same_box_and_lambda():
    from torchvision.transforms import v2

    x, y = batch(1)
    mixing = Mixing(cutmix_alpha=1.0)
    for seed in range(20):  # boxes of every size, some cut at the borders
        draws = mixing.draw(10, 14, generator=torch.Generator().manual_seed(seed))
        lam, (row, col) = float(draws.cutmix_lam), (int(c) for c in draws.centre)
        # v2.CutMix.make_params' rule, written out: half-sides int(sqrt(1 - lam) / 2 * side), clamped
        r = 0.5 * math.sqrt(1.0 - lam)
        x1, y1 = max(col - int(r * 14), 0), max(row - int(r * 10), 0)
        x2, y2 = min(col + int(r * 14), 14), min(row + int(r * 10), 10)
        assert cutmix_box(draws.cutmix_lam, draws.centre, 10, 14).tolist() == [y1, x1, y2, x2]
        reference = v2.CutMix(alpha=1.0, num_classes=5)
        reference.make_params = lambda flat, box=(x1, y1, x2, y2): {
            "box": box,
            "lam_adjusted": 1.0 - (box[2] - box[0]) * (box[3] - box[1]) / 140,
        }
        want_x, want_y = reference(x.clone(), y)
        mixed, soft = mixing.apply(x, y, 5, draws)
        assert torch.equal(mixed, want_x)  # a select: exact
        torch.testing.assert_close(soft, want_y, rtol=0, atol=1e-6)


def test_both_on_gives_one_of_the_two_per_batch_each_about_half_the_time():
    x, y = batch(2)
    mixing = Mixing(mixup_alpha=0.2, cutmix_alpha=1.0)
    cuts = 0
    for seed in range(200):
        d = mixing.draw(10, 14, generator=torch.Generator().manual_seed(seed))
        mixed, soft = mixing.apply(x, y, 5, d)
        alone = Mixing.apply(
            x, y, 5, type(d)(cutmix_lam=d.cutmix_lam, centre=d.centre) if d.cut else type(d)(mixup_lam=d.mixup_lam)
        )
        assert torch.equal(mixed, alone[0]) and torch.equal(soft, alone[1])
        cuts += bool(d.cut)
    assert 70 < cuts < 130  # p = 1/2: 200 draws fall here with probability > 0.99999


def test_only_training_batches_are_mixed_and_labels_stay_distributions():
    data = synthetic(
        shape=[1, 6, 6],
        num_classes=12,
        n_train=40,
        n_val=20,
        batch_size=8,
        noise=0.0,
        augment={"mixup_alpha": 1.0, "cutmix_alpha": 1.0},
        n_test=8,
        on_device=False,
    )
    clean = synthetic(
        shape=[1, 6, 6], num_classes=12, n_train=40, n_val=20, batch_size=8, noise=0.0, n_test=8, on_device=False
    )
    for x, y in data.train:
        assert y.shape == (len(x), 12) and torch.allclose(y.sum(1), torch.ones(len(x)))
    assert any(not torch.equal(y.max(1).values, torch.ones(len(y))) for _, y in data.train)  # really mixed
    for mixed_loader, clean_loader in ((data.val, clean.val), (data.test, clean.test)):
        for (x, y), (cx, cy) in zip(mixed_loader, clean_loader):
            assert y.dtype == torch.long and torch.equal(x, cx) and torch.equal(y, cy)


def test_device_draws_replay_from_any_batch_and_differ_from_batch_to_batch():
    data = synthetic(
        shape=[3, 8, 8],
        n_train=64,
        n_val=16,
        batch_size=16,
        on_device=True,
        seed=0,
        augment={"hflip": True, "mixup_alpha": 0.5, "cutmix_alpha": 1.0},
    )
    loader = data.train.place(CPU)  # the device path (own generator), on the CPU
    start = data.generator.get_state()
    whole = list(loader.iter_from(0))
    data.generator.set_state(start)
    tail = list(loader.iter_from(2))
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(whole[2:], tail))
    assert not torch.equal(whole[0][1], whole[1][1])


def test_mix_collate_mixes_a_collated_batch():
    torch.manual_seed(0)
    x, y = MixCollate(Mixing(mixup_alpha=1.0), 4)([(torch.rand(1, 4, 4), i % 4) for i in range(6)])
    assert x.shape == (6, 1, 4, 4) and y.shape == (6, 4) and torch.allclose(y.sum(1), torch.ones(6))


def test_bad_mixing_values_and_commands_without_classes_are_user_errors():
    for bad in (-0.1, "a", True):
        with pytest.raises(UserError, match="data.augment.mixup_alpha"):
            build_augment({"mixup_alpha": bad}, (3, 8, 8))
    augment = build_augment({"cutmix_alpha": 1.0}, (3, 8, 8))
    with pytest.raises(UserError, match="cutmix_alpha"):
        TensorLoader(torch.zeros(4, 3, 8, 8), torch.zeros(4), 2, augment=augment)  # no num_classes: not `train`


def mixed_fit(run_dir, on_device: bool, stop_at: int | None = None, resume: bool = False):
    """Two epochs on mixed synthetic images (12 classes: top-5 too); ``stop_at``: SIGTERM at that step."""
    torch.manual_seed(0)
    data = synthetic(
        shape=[3, 8, 8],
        num_classes=12,
        n_train=96,
        n_val=32,
        batch_size=16,
        on_device=on_device,
        seed=0,
        augment={"crop_padding": 1, "mixup_alpha": 0.4, "cutmix_alpha": 1.0},
    )
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(144, 12))
    steps = {"n": 0}

    def loss_fn(net, x, y):
        steps["n"] += 1
        if steps["n"] == stop_at:
            signals.request(signal.SIGTERM)
        return cross_entropy(net, x, y)

    run = Run(run_dir, "train", seed=0, device="cpu", resume=resume)
    Trainer(epochs=2, device=CPU, progress=False).fit(
        model,
        torch.optim.SGD(model.parameters(), lr=0.1),
        data.train,
        data.val,
        run=run,
        generator=data.generator,
        loss_fn=loss_fn,
        eval_loss_fn=cross_entropy,
    )
    return pd.read_csv(run_dir / "metrics.csv").drop(columns=["epoch_time_s", "samples_per_s"]), model.state_dict()


@pytest.mark.parametrize("on_device", [True, False], ids=["placed", "host"])
def test_a_mixed_run_resumes_mid_epoch_to_the_same_result(tmp_path, on_device):
    full, weights = mixed_fit(tmp_path / "full", on_device)
    assert {"train_acc5", "val_acc5"} <= set(full.columns) and full["train_acc5"].between(0, 1).all()
    with pytest.raises(signals.Interrupted):
        mixed_fit(tmp_path / "cut", on_device, stop_at=9)  # batch 3 of epoch 2
    assert checkpoint.load(tmp_path / "cut" / "checkpoints" / "last.pt")["tally"]["loader"]["taken"] == 3
    resumed, resumed_weights = mixed_fit(tmp_path / "cut", on_device, resume=True)
    pd.testing.assert_frame_equal(full, resumed, check_exact=True)
    assert all(torch.equal(weights[k], resumed_weights[k]) for k in weights)
