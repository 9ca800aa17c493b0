"""SVHN (cropped digits, 32x32 colour) from its MATLAB files in a local folder; never downloaded.

``root/train_32x32.mat`` and ``root/test_32x32.mat`` (MATLAB v5, read by ``scipy.io.loadmat``, the same
files torchvision's class reads): ``X`` is (32, 32, 3, N) uint8 (rows, columns, channels, image),
``y`` is (N, 1) with the digit 0 stored as label 10, which becomes 0 here.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from nas_cli.data.augment import build_augment
from nas_cli.data.bundle import DataBundle
from nas_cli.data.folders import held_out_bundle
from nas_cli.errors import UserError

SVHN_MEAN, SVHN_STD = (0.4377, 0.4438, 0.4728), (0.1980, 0.2010, 0.1970)
FILES = {"train": "train_32x32.mat", "test": "test_32x32.mat", "extra": "extra_32x32.mat"}


def svhn(
    root: str = "data/svhn",
    batch_size: int = 128,
    val_size: float | int = 5000,
    subset: int | None = None,
    data_seed: int = 0,
    extra: bool = False,
    augment: dict | None = None,
    on_device: str | bool = "auto",
    *,
    seed: int = 0,
) -> DataBundle:
    """SVHN: ``val_size`` of the 73,257 training images held out (stratified, seeded by ``data_seed``),
    the 26,032 test images the test set (see :func:`nas_cli.data.folders.held_out_bundle`).

    ``extra``: add the 531,131 easier ``extra_32x32.mat`` images to the training split before the
    hold-out (the usual 604k-image protocol; 1.9 GB in memory), off by default.
    """
    transform = build_augment(augment, (3, 32, 32), SVHN_MEAN)  # first: a bad block fails before reading data
    folder = Path(root)
    parts = ["train", "test", *(["extra"] if extra else [])]
    missing = [FILES[p] for p in parts if not (folder / FILES[p]).is_file()]
    if missing:
        raise UserError(
            f"SVHN not found: {folder} lacks {', '.join(missing)} (the cropped-digits .mat files); set data.root=..."
        )
    train = read_mat(folder / FILES["train"])
    if extra:
        more = read_mat(folder / FILES["extra"])
        train = (torch.cat([train[0], more[0]]), torch.cat([train[1], more[1]]))
    return held_out_bundle(
        "svhn",
        train,
        read_mat(folder / FILES["test"]),
        10,
        SVHN_MEAN,
        SVHN_STD,
        batch_size=batch_size,
        val_size=val_size,
        subset=subset,
        data_seed=data_seed,
        augment=transform,
        on_device=on_device,
        seed=seed,
    )


def read_mat(path: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """Images (N, 3, 32, 32) uint8 and labels 0-9 from one SVHN .mat file."""
    from scipy.io import loadmat

    try:
        mat = loadmat(str(path), variable_names=["X", "y"])
    except (ValueError, NotImplementedError, OSError, TypeError) as ex:
        raise UserError(f"{path} is not a readable MATLAB v5 file ({ex}); fetch it again") from None
    if "X" not in mat or "y" not in mat:
        raise UserError(f"{path} lacks the variables X and y of an SVHN cropped-digits file")
    x, y = np.asarray(mat["X"]), np.asarray(mat["y"]).reshape(-1).astype(np.int64)
    if x.ndim != 4 or x.shape[2] != 3 or x.shape[3] != len(y):
        raise UserError(f"{path}: X has shape {x.shape} and y {len(y)} labels; expected (H, W, 3, N) and N")
    y[y == 10] = 0  # SVHN stores the digit 0 as 10
    images = np.ascontiguousarray(x.transpose(3, 2, 0, 1), dtype=np.uint8)  # -> (N, channels, rows, columns)
    return torch.from_numpy(images), torch.from_numpy(y)
