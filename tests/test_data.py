"""Data builders: real embedded sets, splits, subsets, the in-memory loader, image folders."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from nas_cli.data.bundle import TensorLoader
from nas_cli.data.embedded import digits, mnist5k
from nas_cli.data.folders import imagefolder
from nas_cli.data.synthetic import synthetic
from nas_cli.errors import UserError


def labels_of(loader) -> torch.Tensor:
    return torch.cat([y for _, y in loader])


@pytest.mark.slow
def test_mnist5k_is_a_stratified_4500_500_split_of_real_digits():
    data = mnist5k(batch_size=100)
    train, val = labels_of(data.train), labels_of(data.val)
    assert len(train) == 4500 and len(val) == 500
    assert torch.bincount(val).tolist() == [50] * 10 and torch.bincount(train).tolist() == [450] * 10
    x, _ = next(iter(data.val))
    assert x.shape == (500, 1, 28, 28)  # validation comes in one batch of up to 512
    # normalized with MNIST's statistics: 0 -> (0 - 0.1307) / 0.3081
    assert x.min().item() == pytest.approx(-0.1307 / 0.3081, abs=1e-5)
    assert data.in_shape == (1, 28, 28) and data.num_classes == 10


@pytest.mark.slow
def test_split_is_fixed_across_training_seeds_and_batches_follow_the_seed():
    a, b = mnist5k(seed=0), mnist5k(seed=1)
    assert torch.equal(labels_of(a.val), labels_of(b.val))
    first_a, first_b = next(iter(a.train))[1], next(iter(b.train))[1]
    assert not torch.equal(first_a, first_b)


def test_subset_keeps_a_stratified_sample():
    data = mnist5k(subset=1000)
    train = labels_of(data.train)
    assert len(train) == 1000 and torch.bincount(train).tolist() == [100] * 10
    assert len(labels_of(data.val)) == 500


def test_digits_are_sklearns_8x8_images():
    data = digits()
    assert data.in_shape == (1, 8, 8) and len(labels_of(data.train)) + len(labels_of(data.val)) == 1797


def test_synthetic_any_shape():
    data = synthetic(shape=[3, 10, 6], num_classes=4, n_train=40, n_val=8)
    x, y = next(iter(data.train))
    assert x.shape[1:] == (3, 10, 6) and data.num_classes == 4 and int(y.max()) < 4


def test_tensor_loader_visits_every_sample_once_per_epoch_in_a_new_order():
    x = torch.arange(10).float().view(10, 1)
    loader = TensorLoader(x, torch.arange(10), batch_size=3, shuffle=True, generator=torch.Generator().manual_seed(0))
    assert len(loader) == 4
    first, second = labels_of(loader), labels_of(loader)
    assert sorted(first.tolist()) == list(range(10)) == sorted(second.tolist())
    assert not torch.equal(first, second)
    for xb, yb in loader:
        assert torch.equal(xb.view(-1).long(), yb)  # inputs stay paired with labels


def test_imagefolder_reads_a_tree_made_here(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    for split, count in (("train", 4), ("val", 2)):
        for cls in ("cat", "dog", "eel"):
            folder = tmp_path / split / cls
            folder.mkdir(parents=True)
            for i in range(count):
                Image.fromarray(rng.integers(0, 255, (40, 30, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    data = imagefolder(str(tmp_path), image_size=16, batch_size=5, num_workers=0)
    assert data.num_classes == 3 and data.in_shape == (3, 16, 16)
    x, y = next(iter(data.train))
    assert x.shape == (5, 3, 16, 16) and x.dtype == torch.float32
    assert len(labels_of(data.val)) == 6
    # MixUp on a folder: the training batches get soft labels (distributions over the 3 classes), validation not
    mixed = imagefolder(str(tmp_path), image_size=16, batch_size=5, num_workers=0, augment={"mixup_alpha": 0.4})
    _, soft = next(iter(mixed.train))
    assert soft.shape == (5, 3) and torch.allclose(soft.sum(1), torch.ones(5)) and (soft < 1).any()
    assert next(iter(mixed.val))[1].dim() == 1
    with pytest.raises(UserError, match="decode=cpu"):
        imagefolder(str(tmp_path), image_size=16, num_workers=0, augment={"mixup_alpha": 0.4}, decode="cuda")


def test_missing_folders_are_user_errors(tmp_path):
    with pytest.raises(UserError, match="not found"):
        imagefolder(str(tmp_path / "nope"))
    from nas_cli.data.folders import cifar10

    with pytest.raises(UserError, match="CIFAR-10 not found"):
        cifar10(str(tmp_path))
