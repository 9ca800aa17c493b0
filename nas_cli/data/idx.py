"""MNIST and Fashion-MNIST from their IDX files in a local folder; never downloaded.

The folder is torchvision's layout (``root/MNIST/raw/`` or ``root/FashionMNIST/raw/``) or the four
files directly under ``root``; each file may be gzip-compressed (``.gz``), as it is distributed.
Read here, not by torchvision's classes, which check or download the files first.

IDX: a big-endian header (two zero bytes, a type code, the number of dimensions, then each
dimension as a 4-byte unsigned integer) followed by the values in row-major order.
"""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import torch

from nas_cli.data.augment import build_augment
from nas_cli.data.bundle import DataBundle
from nas_cli.data.folders import held_out_bundle
from nas_cli.errors import UserError

MNIST_MEAN, MNIST_STD = (0.1307,), (0.3081,)
FASHION_MEAN, FASHION_STD = (0.2860,), (0.3530,)
FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
UBYTE = 0x08  # the only value type MNIST-style files use


def mnist(
    root: str = "data/mnist",
    batch_size: int = 128,
    val_size: float | int = 5000,
    subset: int | None = None,
    data_seed: int = 0,
    augment: dict | None = None,
    on_device: str | bool = "auto",
    *,
    seed: int = 0,
) -> DataBundle:
    """All 70,000 MNIST digits: ``val_size`` of the 60,000 training images held out for validation
    (stratified, seeded by ``data_seed``), the 10,000 t10k images the test set (see
    :func:`nas_cli.data.folders.held_out_bundle`, which also says what ``val_size=0`` does)."""
    return _idx_bundle(
        "mnist",
        "MNIST",
        root,
        MNIST_MEAN,
        MNIST_STD,
        batch_size=batch_size,
        val_size=val_size,
        subset=subset,
        data_seed=data_seed,
        augment=augment,
        on_device=on_device,
        seed=seed,
    )


def fashion_mnist(
    root: str = "data/fashion_mnist",
    batch_size: int = 128,
    val_size: float | int = 5000,
    subset: int | None = None,
    data_seed: int = 0,
    augment: dict | None = None,
    on_device: str | bool = "auto",
    *,
    seed: int = 0,
) -> DataBundle:
    """Fashion-MNIST (70,000 28x28 clothing images, 10 classes), split like :func:`mnist`."""
    return _idx_bundle(
        "fashion_mnist",
        "FashionMNIST",
        root,
        FASHION_MEAN,
        FASHION_STD,
        batch_size=batch_size,
        val_size=val_size,
        subset=subset,
        data_seed=data_seed,
        augment=augment,
        on_device=on_device,
        seed=seed,
    )


def _idx_bundle(name: str, folder_name: str, root: str, mean, std, *, augment: dict | None, **split) -> DataBundle:
    transform = build_augment(augment, (1, 28, 28), mean)  # first: a bad block fails before reading data
    folder = find_folder(Path(root), folder_name)
    train, test = (read_pair(folder, *FILES[part]) for part in ("train", "test"))
    return held_out_bundle(name, train, test, 10, mean, std, augment=transform, **split)


def find_folder(root: Path, folder_name: str) -> Path:
    """``root/<folder_name>/raw`` (torchvision's layout) or ``root`` itself: the first holding all four
    files (each plain or ``.gz``); else a one-line error naming the files it looked for."""
    candidates = [root / folder_name / "raw", root]
    needed = [f for pair in FILES.values() for f in pair]
    for folder in candidates:
        if all(_file(folder, f) is not None for f in needed):
            return folder
    best = max(candidates, key=lambda c: sum(_file(c, f) is not None for f in needed))
    missing = [f for f in needed if _file(best, f) is None]
    raise UserError(
        f"{folder_name} not found: {best} lacks {', '.join(missing)} (each plain or .gz); put the four "
        f"IDX files in data.root/{folder_name}/raw/ or data.root/ and set data.root=..."
    )


def _file(folder: Path, name: str) -> Path | None:
    """``folder/name``, or its ``.gz``, whichever exists (the uncompressed one first)."""
    return next((p for p in (folder / name, folder / f"{name}.gz") if p.is_file()), None)


def read_pair(folder: Path, images_name: str, labels_name: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Images (N, 1, H, W) uint8 and labels (N,) int64 from an IDX image file and its label file."""
    images_file, labels_file = _file(folder, images_name), _file(folder, labels_name)
    assert images_file is not None and labels_file is not None  # find_folder chose a folder holding both
    images, labels = read_idx(images_file), read_idx(labels_file)
    if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
        raise UserError(
            f"{folder}: {images_name} holds shape {images.shape} and {labels_name} {labels.shape}; "
            f"expected (N, H, W) images and N labels"
        )
    return torch.from_numpy(images.copy()).unsqueeze(1), torch.from_numpy(labels.astype(np.int64))


def read_idx(path: Path) -> np.ndarray:
    """The array in one IDX file (plain or gzip), checked against its header."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError) as ex:
        raise UserError(f"{path} cannot be read ({ex}); fetch it again") from None
    if len(raw) < 4 or raw[:2] != b"\0\0" or raw[2] != UBYTE:
        raise UserError(
            f"{path} is not an unsigned-byte IDX file (its header starts {raw[:4].hex()}, expected 0000 08 <dims>)"
        )
    dims = raw[3]
    header = 4 + 4 * dims
    shape = struct.unpack(f">{dims}I", raw[4:header]) if len(raw) >= header else ()
    if len(raw) != header + int(np.prod(shape, dtype=np.int64)) or len(shape) != dims:
        raise UserError(
            f"{path}: header says shape {tuple(shape)} but the file holds {len(raw) - header} values "
            f"(truncated or corrupt); fetch it again"
        )
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(shape)
