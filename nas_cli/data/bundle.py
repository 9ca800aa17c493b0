"""What every data builder returns, and the fast loader for data that fits in memory."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from nas_cli.errors import UserError

if TYPE_CHECKING:
    from nas_cli.data.augment import Mixing


class TensorLoader:
    """Batches sliced from in-memory tensors, reshuffled every epoch by ``generator``.

    Much cheaper than a ``DataLoader`` over a ``TensorDataset`` (one gather per batch
    instead of one index per sample). ``uint8`` images are scaled to [0, 1] and
    normalized per batch, so a large set stays compact in memory.

    ``augment`` (training loaders only) transforms each image of a batch with its own
    random parameters, on the float image in [0, 1] before normalization. An object with
    a ``batch`` method (``nas_cli.data.augment.Augment``) does the whole batch in one call.

    ``on_device`` (``auto`` | ``true`` | ``false``): whether the engine may keep the tensors on the
    training device (:meth:`place`, decided by ``nas_cli.data.resident.place_loaders``). A placed
    loader gathers each batch there with the epoch's permutation (drawn by ``generator`` as on
    the host, so the batches are the same) and augments it there, its random draws from a
    generator on the device re-seeded for every batch from one seed per pass that ``generator``
    draws: ``generator``'s state at the start of a pass still says everything about the pass.

    MixUp/CutMix (``augment.mixing``, not None) mixes each training batch after its per-image
    augmentation, with the same randomness (the device generator, else torch's global RNG), and
    yields soft labels (N, ``num_classes``) instead of class indices.
    """

    def __init__(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        batch_size: int,
        *,
        shuffle: bool = False,
        generator: torch.Generator | None = None,
        mean=None,
        std=None,
        drop_last: bool = False,
        augment: Callable[[torch.Tensor], torch.Tensor] | None = None,
        on_device: str | bool = False,
        num_classes: int | None = None,
    ):
        if len(x) != len(y):
            raise ValueError(f"{len(x)} inputs but {len(y)} labels")
        # class labels as int64; float targets (detection boxes, rows of class and xyxy) as they are
        self.x, self.y = x, (y if y.is_floating_point() else y.long())
        self.batch_size = int(batch_size)
        self.shuffle = shuffle
        self.generator = generator
        self.drop_last = drop_last
        self.augment = augment
        self.mixing: Mixing | None = getattr(augment, "mixing", None)
        self.num_classes = num_classes
        if self.mixing is not None and num_classes is None:
            raise UserError(
                "data.augment.mixup_alpha / cutmix_alpha mix the batches of `train` (and search-rl's "
                "children) only; set them to 0 for this command"
            )
        self.on_device = on_device_policy(on_device)
        self.device: torch.device | None = None  # set by place(): batches are made there
        self._draws: torch.Generator | None = None  # the augmentation's generator on that device
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

    @property
    def nbytes(self) -> int:
        """Bytes the data takes wherever it is held."""
        return self.x.nbytes + self.y.nbytes

    def place(self, device: torch.device | str) -> TensorLoader:
        """Hold the data on ``device`` and make every batch there (see the class docstring)."""
        device = torch.device(device)
        if device.type == "cuda" and device.index is None:
            device = torch.device("cuda", torch.cuda.current_device())
        self.x, self.y = self.x.to(device), self.y.to(device)
        self.mean = None if self.mean is None else self.mean.to(device)
        self.std = None if self.std is None else self.std.to(device)
        self.device = device
        self._draws = torch.Generator(device) if self.augment is not None else None
        return self

    def __len__(self) -> int:
        n = len(self.x) / self.batch_size
        return math.floor(n) if self.drop_last else math.ceil(n)

    def __iter__(self):
        return self.iter_from(0)

    def iter_from(self, start: int):
        """The pass's batches from batch ``start`` on: the same as skipping that many of a whole pass
        (its order and random draws depend only on ``generator``'s state and the batch's index), for
        an exact mid-epoch resume without making the skipped batches. The pass's draws from
        ``generator`` happen here, at once (as ``iter`` of a ``DataLoader`` draws its seed)."""
        n = len(self.x)
        order = torch.randperm(n, generator=self.generator) if self.shuffle else torch.arange(n)
        pass_seed = self._pass_seed() if self._draws is not None else None
        if self.device is not None:
            order = _to_device(order, self.device)  # once a pass, not once a batch
        return self._batches(order, pass_seed, start)

    def _batches(self, order: torch.Tensor, pass_seed: int | None, start: int):
        for i in range(start, len(self)):
            idx = order[i * self.batch_size : (i + 1) * self.batch_size][self.rank :: self.world]
            seed = None if pass_seed is None else pass_seed + i
            if self.mixing is None:
                yield self._prepare(self.x[idx], seed), self.y[idx]
            else:
                yield self._mix(self._augmented(self.x[idx], seed), self.y[idx], seed is not None)

    def fixed_batch(self, size: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The first ``size`` examples as the model sees them, without augmentation: a batch that stays the
        same every time it is asked for (a measurement's, not training's)."""
        x = self.x[:size]
        return self._normalized(x.float().div_(255) if x.dtype == torch.uint8 else x), self.y[:size]

    def _mix(self, x: torch.Tensor, y: torch.Tensor, on_device: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """MixUp/CutMix of the augmented batch, before normalization (mixing is linear: either order gives the
        same batch); on the device it continues the batch's generator, so a batch's index still fixes it."""
        # called only when mixing is on, which __init__ allows only with num_classes
        assert self.mixing is not None and self.num_classes is not None
        x, y = self.mixing(x, y, self.num_classes, generator=self._draws if on_device else None)
        return self._normalized(x), y

    def _pass_seed(self) -> int:
        """The seed of a pass's augmentation on the device; a host draw, once a pass."""
        return int(torch.randint(0, 2**62, (1,), generator=self.generator))

    def _prepare(self, x: torch.Tensor, seed: int | None = None) -> torch.Tensor:
        return self._normalized(self._augmented(x, seed))

    def _augmented(self, x: torch.Tensor, seed: int | None = None) -> torch.Tensor:
        """The batch as floats in [0, 1] (``uint8`` scaled), augmented image by image."""
        if x.dtype == torch.uint8:
            x = x.float().div_(255)
        if self.augment is not None:
            batch = getattr(self.augment, "batch", None)
            if seed is not None and batch is not None:  # on the device: its own generator, seeded per batch
                assert self._draws is not None  # a batch seed is drawn only when placed with augmentation
                x = batch(x, generator=self._draws.manual_seed(seed))
            else:
                x = batch(x) if batch is not None else torch.stack([self.augment(image) for image in x])
        return x

    def _normalized(self, x: torch.Tensor) -> torch.Tensor:
        if self.mean is not None:
            assert self.std is not None  # given together with the mean
            x = (x - self.mean) / self.std
        return x


ON_DEVICE = ("auto", "true", "false")


def on_device_policy(value: str | bool | None) -> str:
    """``data.on_device`` as one of ``auto``, ``true``, ``false`` (YAML gives booleans for the last two)."""
    if isinstance(value, bool) or value is None:
        return "true" if value else "false"
    if str(value).lower() not in ON_DEVICE:
        raise UserError(f"data.on_device={value!r}: use auto (on a GPU when the data fits), true or false")
    return str(value).lower()


def _to_device(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A host tensor on ``device`` without blocking the host (pinned first on CUDA)."""
    if device.type == "cuda":
        return t.pin_memory().to(device, non_blocking=True)
    return t.to(device)


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
    classes: list[str] | None = None  # class names, where the data has them (detection draws them)


def shard_bundle(data: DataBundle, rank: int, world: int, seed: int) -> DataBundle:
    """Give this process its share of both loaders; ``batch_size`` stays the global batch."""
    from torch.utils.data import DataLoader, DistributedSampler

    for name, shuffle in (("train", True), ("val", False), ("test", False)):
        loader = getattr(data, name)
        if isinstance(loader, TensorLoader):
            loader.shard(rank, world)
            continue
        inner = getattr(loader, "loader", loader)  # a GPU-decoding wrapper holds its DataLoader
        if isinstance(inner, DataLoader):
            sampler: DistributedSampler[int] = DistributedSampler(
                inner.dataset, world, rank, shuffle=shuffle, seed=seed
            )
            workers = inner.num_workers
            assert inner.batch_size is not None  # our DataLoaders batch by batch_size, never by a batch_sampler
            sharded = DataLoader(
                inner.dataset,
                batch_size=max(1, inner.batch_size // world),
                sampler=sampler,
                num_workers=workers,
                pin_memory=inner.pin_memory,
                collate_fn=inner.collate_fn,
                persistent_workers=workers > 0,
                prefetch_factor=inner.prefetch_factor,
            )
            if inner is loader:
                setattr(data, name, sharded)
            else:
                loader.loader = sharded
    return data


def split_indices(labels, val_size: float | int, seed: int, subset: int | None = None):
    """Seeded stratified train/val split; ``subset`` keeps at most that many of each (stratified).

    ``val_size``: a fraction in (0, 1) of the examples, or a number of them (see ``check_val_size``).
    """
    import numpy as np
    from sklearn.model_selection import train_test_split

    labels = np.asarray(labels)
    idx = np.arange(len(labels))
    train_idx, val_idx = train_test_split(
        idx, test_size=check_val_size(val_size, labels), stratify=labels, random_state=seed
    )
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
        raise UserError(
            f"data.val_size={val_size} must leave every one of the {classes} classes in both "
            f"parts of the {n} training examples: between {classes} and {n - classes}"
        )
    return val_size


def stratified_cap(idx, labels, cap: int | None, seed: int):
    from sklearn.model_selection import train_test_split

    if cap is None or cap >= len(idx):
        return idx
    if cap < len(set(labels[idx].tolist())):
        raise ValueError(f"data.subset={cap} is smaller than the number of classes")
    kept, _ = train_test_split(idx, train_size=cap, stratify=labels[idx], random_state=seed)
    return kept


def tensor_bundle(
    name: str,
    x: torch.Tensor,
    y: torch.Tensor,
    train_idx,
    val_idx,
    num_classes: int,
    *,
    batch_size: int,
    seed: int,
    mean=None,
    std=None,
    eval_batch_size: int | None = None,
    augment: Callable[[torch.Tensor], torch.Tensor] | None = None,
    test: tuple[torch.Tensor, torch.Tensor] | None = None,
    val_split: str = "held out from train",
    on_device: str | bool = "auto",
) -> DataBundle:
    """Bundle in-memory data: a shuffled (optionally augmented) training loader, fixed-order validation
    and (``test``: inputs and labels) test loaders; ``on_device``: see ``TensorLoader``."""
    generator = torch.Generator().manual_seed(seed)
    train_idx, val_idx = torch.as_tensor(train_idx), torch.as_tensor(val_idx)
    where = {"mean": mean, "std": std, "on_device": on_device_policy(on_device)}
    train = TensorLoader(
        x[train_idx],
        y[train_idx],
        batch_size,
        shuffle=True,
        generator=generator,
        augment=augment,
        num_classes=num_classes,
        **where,
    )
    eval_batch = eval_batch_size or max(batch_size, 512)
    val = TensorLoader(x[val_idx], y[val_idx], eval_batch, **where)
    test_loader = None if test is None else TensorLoader(*test, eval_batch, **where)
    return DataBundle(name, train, val, tuple(x.shape[1:]), num_classes, generator, test_loader, val_split)
