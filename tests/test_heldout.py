"""Held-out validation and the test set, cutout, and the plateau schedule's direction.

Validation is what every decision looks at (best epoch, schedules, search rewards), so it is carved
from the training data; the test set is evaluated once, after training.
"""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch

from nas_cli.data.augment import build_augment, cutout
from nas_cli.data.bundle import TensorLoader
from nas_cli.data.folders import CIFAR_MEAN, CIFAR_STD, cifar10, imagefolder
from nas_cli.engine.schedules import Plateau
from nas_cli.errors import UserError


def write_cifar10(root, per_batch: int = 40, n_test: int = 60) -> None:
    """A tiny CIFAR-10 in its real format: five pickled training batches and a test batch.

    Every image carries its own id in its first two bytes (train ids from 0, test ids from 10,000),
    so a test can tell where each image it gets came from.
    """
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)

    def batch(first_id: int, n: int) -> dict:
        ids = np.arange(first_id, first_id + n)
        data = np.random.default_rng(first_id).integers(0, 256, (n, 3072), dtype=np.uint8)
        data[:, 0], data[:, 1] = ids // 256, ids % 256
        return {"data": data, "labels": [int(i % 10) for i in ids]}

    for k in range(5):
        with open(folder / f"data_batch_{k + 1}", "wb") as f:
            pickle.dump(batch(k * per_batch, per_batch), f)
    with open(folder / "test_batch", "wb") as f:
        pickle.dump(batch(10_000, n_test), f)
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({"label_names": [f"c{i}" for i in range(10)]}, f)


@pytest.fixture
def tiny_cifar(tmp_path):
    write_cifar10(tmp_path)
    return tmp_path


def ids(loader) -> list[int]:
    """The id written into each image (undoing the normalization of its first two bytes)."""
    out = []
    for x, _ in loader:
        raw = (x[:, 0, 0, :2] * CIFAR_STD[0] + CIFAR_MEAN[0]) * 255
        out += (raw[:, 0].round().long() * 256 + raw[:, 1].round().long()).tolist()
    return out


def test_cifar10_validation_is_held_out_from_train_and_the_test_images_stay_apart(tiny_cifar):
    data = cifar10(str(tiny_cifar), batch_size=16, val_size=50)
    train, val, test = set(ids(data.train)), ids(data.val), ids(data.test)
    assert len(val) == 50 and len(set(val)) == 50 and len(train) == 150
    assert set(val) <= set(range(200)) and not set(val) & train  # carved from the 200 training images
    assert sorted(test) == list(range(10_000, 10_060))  # the test batch, whole and alone
    assert torch.bincount(torch.cat([y for _, y in data.val])).tolist() == [5] * 10  # stratified
    assert data.val_split == "50 held out from train"
    again = cifar10(str(tiny_cifar), batch_size=16, val_size=50, seed=3)  # other training seed: same split
    assert ids(again.val) == val
    other = cifar10(str(tiny_cifar), batch_size=16, val_size=50, data_seed=1)
    assert set(ids(other.val)) != set(val)


def test_cifar10_val_size_0_validates_on_the_test_images_and_says_so(tiny_cifar):
    data = cifar10(str(tiny_cifar), batch_size=16, val_size=0)
    assert sorted(ids(data.val)) == list(range(10_000, 10_060)) and len(ids(data.train)) == 200
    assert data.test is None and data.val_split == "test"


@pytest.mark.parametrize("bad", [-1, 1.5, 5, 199, "half"])
def test_a_bad_val_size_is_one_clear_error(tiny_cifar, bad):
    with pytest.raises(UserError, match="data.val_size"):
        cifar10(str(tiny_cifar), val_size=bad)


def test_train_reports_the_test_set_once_at_the_end(tiny_cifar, tmp_path, train_task):
    from nas_cli.models.cnn import SmallCNN
    from nas_cli.runs import checkpoint
    from nas_cli.runs.files import WEIGHTS

    run = tmp_path / "run"
    s = train_task(
        run,
        "data=cifar10",
        f"data.root={tiny_cifar}",
        "data.val_size=50",
        "data.batch_size=32",
        "model.width=4",
        "model.hidden=16",
        "trainer.epochs=2",
    )
    assert s["val_split"] == "50 held out from train" and "test_acc" in s["headline"]
    # the test figures are the saved final model's, on the 60 test images
    data = cifar10(str(tiny_cifar), val_size=50)
    model = SmallCNN(in_shape=(3, 32, 32), num_classes=10, width=4, hidden=16)
    model.load_state_dict(checkpoint.load(run / WEIGHTS)["model"])
    model.eval()
    with torch.no_grad():
        x, y = next(iter(data.test))
        logits = model(x)
    assert s["test_acc"] == pytest.approx((logits.argmax(1) == y).float().mean().item())
    assert s["test_loss"] == pytest.approx(torch.nn.functional.cross_entropy(logits, y).item(), rel=1e-5)
    assert "test_acc" not in open(run / "metrics.csv").readline()  # never a per-epoch figure


def test_imagefolder_test_folder_and_held_out_validation(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    for split, count in (("train", 6), ("val", 2), ("test", 3)):
        for cls in ("cat", "dog"):
            (tmp_path / split / cls).mkdir(parents=True)
            for i in range(count):
                Image.fromarray(rng.integers(0, 255, (20, 20, 3), dtype=np.uint8)).save(
                    tmp_path / split / cls / f"{i}.png"
                )
    plain = imagefolder(str(tmp_path), image_size=8, batch_size=4, num_workers=0)
    assert (len(plain.val.dataset), len(plain.test.dataset), plain.val_split) == (4, 6, "val/")
    carved = imagefolder(str(tmp_path), image_size=8, batch_size=4, num_workers=0, val_size=4)
    assert (len(carved.train.dataset), len(carved.val.dataset), len(carved.test.dataset)) == (8, 4, 6)
    assert not set(carved.train.dataset.indices) & set(carved.val.dataset.indices)


def test_cutout_paints_the_square_drawn_around_each_centre():
    x = torch.rand(6, 3, 10, 12)
    fill = torch.tensor([0.1, 0.2, 0.3]).view(3, 1, 1)
    torch.manual_seed(4)
    out = cutout(x, 4, fill)
    torch.manual_seed(4)  # the same draws, written out: centre uniform over the image, square cut at the borders
    cy, cx = torch.randint(0, 10, (6, 1)), torch.randint(0, 12, (6, 1))
    for i in range(6):
        for r in range(10):
            for c in range(12):
                hole = cy[i, 0] - 2 <= r < cy[i, 0] + 2 and cx[i, 0] - 2 <= c < cx[i, 0] + 2
                assert torch.equal(out[i, :, r, c], fill[:, 0, 0] if hole else x[i, :, r, c])


def test_cutout_holes_are_zero_after_normalization_as_in_the_reference():
    augment = build_augment({"cutout": 16}, (3, 32, 32), CIFAR_MEAN)
    images = torch.full((64, 3, 32, 32), 255, dtype=torch.uint8)
    loader = TensorLoader(images, torch.zeros(64), 64, mean=CIFAR_MEAN, std=CIFAR_STD, augment=augment)
    x, _ = next(iter(loader))
    zero = (x.abs() < 1e-6).all(1)  # (n, h, w): pixels painted in every channel
    assert zero.flatten(1).sum(1).min() >= 8 * 8 and zero.flatten(1).sum(1).max() == 16 * 16
    assert (zero.flatten(1).sum(1) == 256).any()  # some centres are far enough from the borders
    with pytest.raises(UserError, match="cutout"):
        build_augment({"cutout": 40}, (3, 32, 32))


def lr_drops(schedule: Plateau, values: list[float], monitor: str) -> list[int]:
    """The epochs (1-based) after which ``schedule`` lowered its lr."""
    drops, scale = [], schedule.scale
    for epoch, value in enumerate(values, 1):
        schedule.epoch_end({monitor: value})
        if schedule.scale < scale:
            drops.append(epoch)
        scale = schedule.scale
    return drops


def test_plateau_on_accuracy_drops_only_after_it_stops_rising():
    rising_then_flat = [0.5, 0.6, 0.7, 0.8, 0.85, 0.85, 0.85, 0.84, 0.85]
    schedule = Plateau(monitor="val_acc", patience=2, factor=0.5)
    assert schedule.mode == "max"
    # best 0.85 at epoch 5; epochs 6, 7, 8 bring nothing better: the third bad epoch exceeds patience 2
    assert lr_drops(schedule, rising_then_flat, "val_acc") == [8]
    assert schedule.scale == 0.5
    # minimising an accuracy (the wrong direction for val_acc) would cut the lr while it is still rising
    assert lr_drops(Plateau(monitor="val_acc", patience=2, factor=0.5, mode="min"), rising_then_flat, "val_acc") == [
        4,
        7,
    ]


def test_plateau_on_a_loss_still_minimises_and_bad_settings_are_refused():
    assert Plateau(monitor="val_loss").mode == "min" and Plateau(monitor="episode_return").mode == "max"
    assert lr_drops(Plateau(monitor="val_loss", patience=1, factor=0.1), [1.0, 0.9, 0.9, 0.95, 0.5], "val_loss") == [4]
    with pytest.raises(UserError, match="sched.mode"):
        Plateau(mode="up")
    with pytest.raises(UserError, match="not a column"):
        Plateau(monitor="val_acc").epoch_end({"val_loss": 1.0})
