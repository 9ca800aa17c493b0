"""What every data builder returns, and the fast loader for data that fits in memory."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch

from nas_cli.errors import UserError


class TensorLoader:
    """Batches sliced from in-memory tensors, reshuffled every epoch by ``generator``.

    Much cheaper than a ``DataLoader`` over a ``TensorDataset`` (one gather per batch
    instead of one index per sample). ``uint8`` images are scaled to [0, 1] and
    normalized per batch, so a large set stays compact in memory.

    ``augment`` (training loaders only) transforms each image of a batch with its own
    random parameters, on the float image in [0, 1] before normalization. An object with
    a ``batch`` method (``nas_cli.data.augment.Augment``) does the whole batch in one call.
    """

    def __init__(self, x: torch.Tensor, y: torch.Tensor, batch_size: int, *, shuffle: bool = False,
                 generator: torch.Generator | None = None, mean=None, std=None, drop_last: bool = False,
                 augment: Callable[[torch.Tensor], torch.Tensor] | None = None):
        if len(x) != len(y):
            raise ValueError(f"{len(x)} inputs but {len(y)} labels")
        self.x, self.y = x, y.long()
        self.batch_size = int(batch_size)
        self.shuffle = shuffle
        self.generator = generator
        self.drop_last = drop_last
        self.augment = augment
        shape = (1, -1) + (1,) * (x.dim() - 2)
        self.mean = None if mean is None else torch.as_tensor(mean, dtype=torch.float32).view(shape)
        self.std = None if std is None else torch.as_tensor(std, dtype=torch.float32).view(shape)
        self.rank, self.world = 0, 1

    def shard(self, rank: int, world: int) -> TensorLoader:
        """Yield only this process's share of every global batch (multi-process training).

        Every process draws the same permutation (same generator seed), so together they
        see each global batch exactly once.
        """
        self.rank, self.world = rank, world
        return self

    def __len__(self) -> int:
        n = len(self.x) / self.batch_size
        return math.floor(n) if self.drop_last else math.ceil(n)

    def __iter__(self):
        n = len(self.x)
        order = torch.randperm(n, generator=self.generator) if self.shuffle else torch.arange(n)
        for i in range(len(self)):
            idx = order[i * self.batch_size:(i + 1) * self.batch_size][self.rank::self.world]
            yield self._prepare(self.x[idx]), self.y[idx]

    def _prepare(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype == torch.uint8:
            x = x.float().div_(255)
        if self.augment is not None:
            batch = getattr(self.augment, "batch", None)
            x = batch(x) if batch is not None else torch.stack([self.augment(image) for image in x])
        if self.mean is not None:
            x = (x - self.mean) / self.std
        return x


@dataclass
class DataBundle:
    """Training, validation (and test) loaders plus what a model needs to know about the inputs.

    ``val`` is what every decision looks at (best epoch, schedules, search rewards); ``test``,
    when the data has one, is only evaluated once at the end of a run, so it stays unseen.
    """

    name: str
    train: Iterable
    val: Iterable
    in_shape: tuple[int, ...]  # (channels, height, width) or (features,)
    num_classes: int
    generator: torch.Generator | None = None  # orders the training data; saved in checkpoints
    test: Iterable | None = None
    val_split: str = "held out from train"  # what ``val`` is, for summaries and report captions


def shard_bundle(data: DataBundle, rank: int, world: int, seed: int) -> DataBundle:
    """Give this process its share of both loaders; ``batch_size`` stays the global batch."""
    from torch.utils.data import DataLoader, DistributedSampler

    for name, shuffle in (("train", True), ("val", False), ("test", False)):
        loader = getattr(data, name)
        if isinstance(loader, TensorLoader):
            loader.shard(rank, world)
        elif isinstance(loader, DataLoader):
            sampler = DistributedSampler(loader.dataset, world, rank, shuffle=shuffle, seed=seed)
            setattr(data, name, DataLoader(loader.dataset, batch_size=max(1, loader.batch_size // world),
                                           sampler=sampler, num_workers=loader.num_workers,
                                           pin_memory=loader.pin_memory,
                                           persistent_workers=loader.num_workers > 0))
    return data


def split_indices(labels, val_size: float | int, seed: int, subset: int | None = None):
    """Seeded stratified train/val split; ``subset`` keeps at most that many of each (stratified).

    ``val_size``: a fraction in (0, 1) of the examples, or a number of them (see ``check_val_size``).
    """
    import numpy as np
    from sklearn.model_selection import train_test_split

    labels = np.asarray(labels)
    idx = np.arange(len(labels))
    train_idx, val_idx = train_test_split(idx, test_size=check_val_size(val_size, labels),
                                          stratify=labels, random_state=seed)
    return stratified_cap(train_idx, labels, subset, seed), stratified_cap(val_idx, labels, subset, seed)


def check_val_size(val_size, labels) -> float | int:
    """``data.val_size`` as sklearn takes it: a fraction in (0, 1), or a whole number of examples
    that leaves every class in both parts."""
    n, classes = len(labels), len(set(labels.tolist()))
    if isinstance(val_size, bool) or not isinstance(val_size, (int, float)) or val_size <= 0:
        raise UserError(f"data.val_size must be a fraction in (0, 1) or a number of examples, not {val_size!r}")
    if isinstance(val_size, float) and val_size.is_integer() and val_size >= 1:
        val_size = int(val_size)
    if isinstance(val_size, float) and not val_size < 1:
        raise UserError(f"data.val_size={val_size}: a fraction must be below 1")
    if isinstance(val_size, int) and not classes <= val_size <= n - classes:
        raise UserError(f"data.val_size={val_size} must leave every one of the {classes} classes in both "
                        f"parts of the {n} training examples: between {classes} and {n - classes}")
    return val_size


def stratified_cap(idx, labels, cap: int | None, seed: int):
    from sklearn.model_selection import train_test_split

    if cap is None or cap >= len(idx):
        return idx
    if cap < len(set(labels[idx].tolist())):
        raise ValueError(f"data.subset={cap} is smaller than the number of classes")
    kept, _ = train_test_split(idx, train_size=cap, stratify=labels[idx], random_state=seed)
    return kept


def tensor_bundle(name: str, x: torch.Tensor, y: torch.Tensor, train_idx, val_idx, num_classes: int, *,
                  batch_size: int, seed: int, mean=None, std=None, eval_batch_size: int | None = None,
                  augment: Callable[[torch.Tensor], torch.Tensor] | None = None,
                  test: tuple[torch.Tensor, torch.Tensor] | None = None,
                  val_split: str = "held out from train") -> DataBundle:
    """Bundle in-memory data: a shuffled (optionally augmented) training loader, fixed-order validation
    and (``test``: inputs and labels) test loaders."""
    generator = torch.Generator().manual_seed(seed)
    train_idx, val_idx = torch.as_tensor(train_idx), torch.as_tensor(val_idx)
    train = TensorLoader(x[train_idx], y[train_idx], batch_size, shuffle=True, generator=generator, mean=mean, std=std,
                         augment=augment)
    eval_batch = eval_batch_size or max(batch_size, 512)
    val = TensorLoader(x[val_idx], y[val_idx], eval_batch, mean=mean, std=std)
    test_loader = None if test is None else TensorLoader(*test, eval_batch, mean=mean, std=std)
    return DataBundle(name, train, val, tuple(x.shape[1:]), num_classes, generator, test_loader, val_split)
