"""Data read from a local folder named in the config; never downloaded.

* ``cifar10``: the python-pickle CIFAR-10 (``root/cifar-10-batches-py``), held in memory.
* ``cifar100``: the python-pickle CIFAR-100 (``root/cifar-100-python``), fine or coarse labels.
  (MNIST / Fashion-MNIST IDX files: ``nas_cli.data.idx``; SVHN .mat files: ``nas_cli.data.svhn``;
  all three share :func:`held_out_bundle`.)
* ``imagefolder``: ``root/train/<class>/*`` and ``root/val/<class>/*`` (what ``prep-imagenet`` writes).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from nas_cli.data import gpu_decode
from nas_cli.data.augment import MixCollate, build_augment
from nas_cli.data.bundle import DataBundle, split_indices, stratified_cap, tensor_bundle
from nas_cli.errors import UserError

CIFAR_MEAN, CIFAR_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def cifar10(
    root: str = "data/cifar10",
    batch_size: int = 128,
    val_size: float | int = 5000,
    subset: int | None = None,
    data_seed: int = 0,
    augment: dict | None = None,
    on_device: str | bool = "auto",
    *,
    seed: int = 0,
) -> DataBundle:
    """CIFAR-10 from ``root``: ``val_size`` training images held out (stratified, seeded by ``data_seed``)
    for validation, the 10,000 test images as the test set; ``augment``: training only.

    ``val_size=0`` trains on all 50,000 and validates on the test images (the DARTS retraining
    protocol); the run record then says so (``val_split: test``). ``on_device``: keep the images
    (150 MB as uint8) on the training device (see ``nas_cli.data.resident``).
    """
    transform = build_augment(augment, (3, 32, 32), CIFAR_MEAN)
    folder = Path(root) / "cifar-10-batches-py"
    x, y = read_cifar_batches(folder, [f"data_batch_{k}" for k in range(1, 6)])
    xt, yt = read_cifar_batches(folder, ["test_batch"])
    return held_out_bundle(
        "cifar10",
        (x, y),
        (xt, yt),
        10,
        CIFAR_MEAN,
        CIFAR_STD,
        batch_size=batch_size,
        val_size=val_size,
        subset=subset,
        data_seed=data_seed,
        augment=transform,
        on_device=on_device,
        seed=seed,
    )


CIFAR100_MEAN, CIFAR100_STD = (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)
CIFAR100_LABELS = {"fine": 100, "coarse": 20}  # label kind -> number of classes


def cifar100(
    root: str = "data/cifar100",
    batch_size: int = 128,
    val_size: float | int = 5000,
    subset: int | None = None,
    data_seed: int = 0,
    label: str = "fine",
    augment: dict | None = None,
    on_device: str | bool = "auto",
    *,
    seed: int = 0,
) -> DataBundle:
    """CIFAR-100 (python version, ``root/cifar-100-python/{train,test}``), split like :func:`cifar10`.

    ``label``: ``fine`` (the 100 classes everyone reports) or ``coarse`` (the 20 superclasses).
    Class names come from ``meta`` when it is there (it is not needed to train).
    """
    if label not in CIFAR100_LABELS:
        raise UserError(f"data.label={label!r}: use fine (100 classes) or coarse (20 superclasses)")
    transform = build_augment(augment, (3, 32, 32), CIFAR100_MEAN)
    folder = Path(root) / "cifar-100-python"
    missing = [n for n in ("train", "test") if not (folder / n).is_file()]
    if missing:
        raise UserError(
            f"CIFAR-100 not found: {folder} lacks {', '.join(missing)} (the python version, "
            f"cifar-100-python.tar.gz, unpacked under data.root); set data.root=..."
        )
    key = f"{label}_labels"
    train, test = read_cifar_pickle(folder / "train", key), read_cifar_pickle(folder / "test", key)
    data = held_out_bundle(
        "cifar100",
        train,
        test,
        CIFAR100_LABELS[label],
        CIFAR100_MEAN,
        CIFAR100_STD,
        batch_size=batch_size,
        val_size=val_size,
        subset=subset,
        data_seed=data_seed,
        augment=transform,
        on_device=on_device,
        seed=seed,
    )
    data.classes = _cifar100_names(folder / "meta", f"{label}_label_names")
    return data


def held_out_bundle(
    name: str,
    train: tuple[torch.Tensor, torch.Tensor],
    test: tuple[torch.Tensor, torch.Tensor],
    num_classes: int,
    mean,
    std,
    *,
    batch_size: int,
    val_size: float | int,
    subset: int | None,
    data_seed: int,
    augment,
    on_device: str | bool,
    seed: int,
) -> DataBundle:
    """The protocol every in-memory set with an official test split follows (CIFAR, MNIST, SVHN).

    Validation: ``val_size`` training images (stratified, seeded by ``data_seed``, so fixed across
    training seeds); the official test split is the test set, evaluated once at the end. ``val_size=0``
    trains on the whole training split and validates on the test split (``val_split: test``, no test
    set). ``subset`` caps every part (stratified, fixed seed). ``augment``: a built augmentation.
    """
    (x, y), (xt, yt) = train, test
    test_idx = stratified_cap(np.arange(len(yt)), yt.numpy(), subset, seed=0)
    xt, yt = xt[test_idx], yt[test_idx]
    common = {
        "batch_size": batch_size,
        "seed": seed,
        "mean": mean,
        "std": std,
        "augment": augment,
        "on_device": on_device,
    }
    if not val_size:
        train_idx = stratified_cap(np.arange(len(y)), y.numpy(), subset, seed=0)
        x, y = torch.cat([x[train_idx], xt]), torch.cat([y[train_idx], yt])
        return tensor_bundle(
            name,
            x,
            y,
            np.arange(len(train_idx)),
            np.arange(len(train_idx), len(y)),
            num_classes,
            val_split="test",
            **common,
        )
    train_idx, val_idx = split_indices(y.numpy(), val_size, data_seed, subset)
    return tensor_bundle(
        name,
        x,
        y,
        train_idx,
        val_idx,
        num_classes,
        test=(xt, yt),
        val_split=f"{len(val_idx)} held out from train",
        **common,
    )


def read_cifar_batches(folder: Path, names: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """Images (N, 3, 32, 32) uint8 and labels from CIFAR-10's pickled python batches.

    Read here rather than by torchvision's class, which checks each file's md5 first (seconds per
    run, and no way to read a small file in the same format).
    """
    missing = [n for n in names if not (folder / n).is_file()]
    if missing:
        raise UserError(
            f"CIFAR-10 not found: {folder} lacks {', '.join(missing)} (the python version, "
            f"cifar-10-python.tar.gz, unpacked under data.root); set data.root=..."
        )
    parts = [read_cifar_pickle(folder / name, "labels") for name in names]
    return torch.cat([x for x, _ in parts]), torch.cat([y for _, y in parts])


def read_cifar_pickle(path: Path, label_key: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Images (N, 3, 32, 32) uint8 and the ``label_key`` labels of one CIFAR python pickle.

    The official files are Python 2 pickles (latin1 text, ``str`` keys once loaded); ``bytes`` keys,
    as a Python 3 writer with ``b"data"`` makes them, are read too.
    """
    batch = _load_pickle(path)
    if "data" not in batch or label_key not in batch:
        raise UserError(f"{path} is not a CIFAR python batch: it lacks 'data' or '{label_key}'")
    images = np.asarray(batch["data"], dtype=np.uint8).reshape(-1, 3, 32, 32)
    return torch.from_numpy(images), torch.as_tensor(np.asarray(batch[label_key]), dtype=torch.long)


# What a CIFAR batch may be made of: plain containers and numpy arrays. A data folder may come from
# someone else, and an unrestricted pickle can call any function while it loads.
_PICKLE_GLOBALS = {
    (module, name)
    for module in ("numpy.core.multiarray", "numpy._core.multiarray")
    for name in ("_reconstruct", "scalar")
} | {
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("_codecs", "encode"),  # protocol 2 writes bytes with encode
    ("numpy.core.numeric", "_frombuffer"),
    ("numpy._core.numeric", "_frombuffer"),
}


def _load_pickle(path: Path) -> dict:
    import pickle

    class DataOnly(pickle.Unpickler):
        def find_class(self, module: str, name: str):
            if (module, name) not in _PICKLE_GLOBALS:
                raise pickle.UnpicklingError(f"it names {module}.{name}, which a data file has no need of")
            return super().find_class(module, name)

    try:
        with open(path, "rb") as f:
            batch = DataOnly(f, encoding="latin1").load()
    except (pickle.UnpicklingError, EOFError, ValueError) as ex:
        raise UserError(f"{path} is not a readable pickle ({ex}); unpack the python version again") from None
    if not isinstance(batch, dict):
        raise UserError(f"{path} is not a CIFAR python batch (a pickled dict)")
    return {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in batch.items()}


def _cifar100_names(meta: Path, key: str) -> list[str] | None:
    """Class names from CIFAR-100's ``meta`` file, or None when it is absent (only names need it)."""
    if not meta.is_file():
        return None
    names = _load_pickle(meta).get(key)
    return None if names is None else [n.decode() if isinstance(n, bytes) else str(n) for n in names]


# worker processes per training process when data.num_workers is null: past ~8, JPEG decoding in
# workers rarely feeds one GPU faster, while each worker is a process with its own memory and
# prefetched batches (and under torchrun every rank on the node starts its own)
MAX_WORKERS = 8
DECODE = ("cpu", "cuda")


def default_workers() -> int:
    """``min(cores, MAX_WORKERS)``, the cores being this process's share of the node's (its CPU
    affinity, which SLURM and taskset narrow, split among torchrun's local ranks)."""
    import os

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    ranks = int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1)
    return max(1, min(cores // max(ranks, 1), MAX_WORKERS))


def imagefolder(
    root: str,
    image_size: int = 224,
    batch_size: int = 64,
    num_workers: int | None = None,
    subset: int | None = None,
    augment: dict | None = None,
    val_size: float | int | None = None,
    data_seed: int = 0,
    prefetch_factor: int = 4,
    decode: str = "cpu",
    *,
    seed: int = 0,
) -> DataBundle:
    """Images under ``root/train``, ``root/val`` and optionally ``root/test`` (one folder per class),
    resized and center-cropped.

    Validation is ``val/``, or with ``val_size`` a stratified split of ``train/`` (seeded by
    ``data_seed``); the test set, evaluated once at the end, is ``test/`` when it exists, else
    ``val/`` when validation was carved from ``train/``. ``augment`` changes the training images
    only; with ``resized_crop_scale`` a random resized crop replaces the resize and center crop.

    Loading: ``num_workers`` processes (None: :func:`default_workers`), kept across epochs, each
    ``prefetch_factor`` batches ahead, into pinned memory on a CUDA machine. ``decode``: ``cpu``
    decodes and transforms each image in the workers; ``cuda`` has the workers only read the
    files' bytes, and decodes each batch on the GPU (nvJPEG, JPEG files only), then resizes,
    crops and augments it there (:class:`nas_cli.data.gpu_decode.GpuDecoded`).
    """
    from torch.utils.data import DataLoader, Subset
    from torchvision.datasets import ImageFolder
    from torchvision.transforms import v2

    image_size = int(image_size)
    if decode not in DECODE:
        raise UserError(f"data.decode={decode!r}: use cpu (in the loader's workers) or cuda (nvJPEG on the GPU)")
    if decode == "cuda":
        gpu_decode.check_cuda_decode()  # before reading anything: a CPU machine fails at once, in one line
    workers = default_workers() if num_workers is None else int(num_workers)
    if workers < 0 or (workers and int(prefetch_factor) < 1):
        raise UserError(
            f"data.num_workers={num_workers}, data.prefetch_factor={prefetch_factor}: "
            f"use null or 0 or more workers, and a prefetch_factor of 1 or more"
        )
    augmentation = build_augment(augment, image_size, IMAGENET_MEAN)
    root_path = Path(root)
    required = ("train",) if val_size else ("train", "val")
    for split in required:
        if not (root_path / split).is_dir():
            raise UserError(
                f"image folder '{root_path / split}' not found: data.root must hold train/ and val/ "
                f"with one sub-folder per class (nas-cli prep-imagenet writes this layout)"
            )
    resize = [v2.Resize(round(image_size * 8 / 7), antialias=True), v2.CenterCrop(image_size)]
    to_float = [v2.ToDtype(torch.float32, scale=True), v2.Normalize(IMAGENET_MEAN, IMAGENET_STD)]
    eval_transform = v2.Compose([v2.ToImage(), *resize, *to_float])
    train_transform = eval_transform
    if augmentation is not None:
        # augmented while still uint8 (cheaper to crop and resize); the random resized crop sizes it itself
        own_size = augmentation.resized_crop_scale is not None
        train_transform = v2.Compose([v2.ToImage(), *([] if own_size else resize), augmentation.pipeline, *to_float])
    if decode == "cuda":  # the workers only read bytes: every transform happens on the GPU
        train_transform = eval_transform = None
    reader = {"loader": gpu_decode.read_bytes} if decode == "cuda" else {}
    train_ds = ImageFolder(str(root_path / "train"), transform=train_transform, **reader)
    classes, targets = train_ds.classes, np.array(train_ds.targets)

    def folder(split: str):
        ds = ImageFolder(str(root_path / split), transform=eval_transform, **reader)
        if ds.classes != classes:
            raise UserError(f"train/ and {split}/ under '{root}' hold different class folders")
        return Subset(ds, stratified_cap(np.arange(len(ds)), np.array(ds.targets), subset, 0)) if subset else ds

    if val_size:
        train_idx, val_idx = split_indices(targets, val_size, data_seed, subset)
        val_ds = Subset(ImageFolder(str(root_path / "train"), transform=eval_transform, **reader), val_idx)
        train_ds = Subset(train_ds, train_idx)
        val_split = f"{len(val_idx)} held out from train/"
    else:
        val_ds, val_split = folder("val"), "val/"
        if subset:
            train_ds = Subset(train_ds, stratified_cap(np.arange(len(train_ds)), targets, subset, 0))
    test_split = next((s for s in ("test", "val" if val_size else None) if s and (root_path / s).is_dir()), None)
    generator = torch.Generator().manual_seed(seed)
    common: dict[str, Any] = {
        "batch_size": batch_size,
        "num_workers": workers,
        "pin_memory": torch.cuda.is_available(),
        "persistent_workers": workers > 0,
        "prefetch_factor": int(prefetch_factor) if workers else None,
    }
    if decode == "cuda":
        common["collate_fn"] = gpu_decode.collate_bytes
    mixing = getattr(augmentation, "mixing", None)
    if mixing is not None and decode == "cuda":
        raise UserError("data.augment.mixup_alpha / cutmix_alpha need data.decode=cpu for image folders")
    # MixUp/CutMix mix each collated training batch (validation and test never)
    train_collate: dict[str, Any] = {"collate_fn": MixCollate(mixing, len(classes))} if mixing is not None else {}
    train_loader: DataLoader[Any] | gpu_decode.GpuDecoded = DataLoader(
        train_ds, shuffle=True, generator=generator, drop_last=False, **common, **train_collate
    )
    val_loader: DataLoader[Any] | gpu_decode.GpuDecoded = DataLoader(val_ds, shuffle=False, **common)
    test_loader: DataLoader[Any] | gpu_decode.GpuDecoded | None = (
        DataLoader(folder(test_split), shuffle=False, **common) if test_split else None
    )
    if decode == "cuda":
        device = torch.device("cuda", torch.cuda.current_device())
        batcher = gpu_decode.ImageBatcher(image_size, IMAGENET_MEAN, IMAGENET_STD, augmentation)
        train_loader = gpu_decode.GpuDecoded(train_loader, batcher, device, generator)
        evaluation = gpu_decode.ImageBatcher(image_size, IMAGENET_MEAN, IMAGENET_STD)
        val_loader = gpu_decode.GpuDecoded(val_loader, evaluation, device)
        test_loader = gpu_decode.GpuDecoded(test_loader, evaluation, device) if test_loader is not None else None
    return DataBundle(
        "imagefolder",
        train_loader,
        val_loader,
        (3, image_size, image_size),
        len(classes),
        generator,
        test_loader,
        val_split,
    )
