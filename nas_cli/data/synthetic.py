"""Synthetic classification data of any shape: Gaussian clusters around class prototypes."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from nas_cli.data.augment import build_augment
from nas_cli.data.bundle import DataBundle, tensor_bundle


def synthetic(
    shape: Sequence[int] = (1, 28, 28),
    num_classes: int = 10,
    n_train: int = 1000,
    n_val: int = 200,
    noise: float = 1.0,
    batch_size: int = 64,
    data_seed: int = 0,
    subset: int | None = None,
    augment: dict | None = None,
    n_test: int = 0,
    on_device: str | bool = "auto",
    *,
    seed: int = 0,
) -> DataBundle:
    """``x = prototype[y] + noise * N(0, 1)``: learnable, any input ``shape``, no files needed.

    ``augment`` (training batches only) needs an image ``shape`` (channels, height, width).
    ``n_test`` > 0 adds a test set of that many examples, evaluated once at the end of a run.
    ``on_device``: keep the data on the training device (see ``nas_cli.data.resident``).
    """
    g = torch.Generator().manual_seed(data_seed)
    shape = tuple(int(s) for s in shape)
    transform = build_augment(augment, shape)  # first: a bad block fails before any data is made
    n_train = min(n_train, subset) if subset else n_train
    n_val = min(n_val, subset) if subset else n_val
    prototypes = torch.randn(num_classes, *shape, generator=g)
    n = n_train + n_val
    y = torch.arange(n) % num_classes
    y = y[torch.randperm(n, generator=g)]
    x = prototypes[y] + noise * torch.randn(n, *shape, generator=g)
    test = None
    if n_test:  # drawn after the rest, so the train and val examples do not depend on it
        y_test = torch.arange(int(n_test)) % num_classes
        test = (prototypes[y_test] + noise * torch.randn(int(n_test), *shape, generator=g), y_test)
    return tensor_bundle(
        "synthetic",
        x,
        y,
        torch.arange(n_train),
        torch.arange(n_train, n),
        num_classes,
        batch_size=batch_size,
        seed=seed,
        augment=transform,
        test=test,
        on_device=on_device,
    )
