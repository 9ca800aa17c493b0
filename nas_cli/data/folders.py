"""Data read from a local folder named in the config; never downloaded.

* ``cifar10``: the python-pickle CIFAR-10 (``root/cifar-10-batches-py``), held in memory.
* ``imagefolder``: ``root/train/<class>/*`` and ``root/val/<class>/*`` (what ``prep-imagenet`` writes).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from nas_cli.data.augment import build_augment
from nas_cli.data.bundle import DataBundle, TensorLoader, stratified_cap
from nas_cli.errors import UserError

CIFAR_MEAN, CIFAR_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def cifar10(root: str = "data/cifar10", batch_size: int = 128, subset: int | None = None,
            augment: dict | None = None, *, seed: int = 0) -> DataBundle:
    """CIFAR-10 from ``root`` (train: 50,000 images, val: the 10,000 test images); ``augment``: training only."""
    from torchvision.datasets import CIFAR10

    transform = build_augment(augment, (3, 32, 32))

    try:
        train = CIFAR10(root, train=True, download=False)
        test = CIFAR10(root, train=False, download=False)
    except RuntimeError as ex:
        raise UserError(f"CIFAR-10 not found under '{root}' (expected {root}/cifar-10-batches-py); "
                        f"download it there or set data.root=...") from ex

    def tensors(ds):
        return torch.from_numpy(ds.data).permute(0, 3, 1, 2).contiguous(), torch.as_tensor(ds.targets)

    (xt, yt), (xv, yv) = tensors(train), tensors(test)
    ti = stratified_cap(np.arange(len(yt)), yt.numpy(), subset, seed=0)
    vi = stratified_cap(np.arange(len(yv)), yv.numpy(), subset, seed=0)
    generator = torch.Generator().manual_seed(seed)
    train_loader = TensorLoader(xt[ti], yt[ti], batch_size, shuffle=True, generator=generator,
                                mean=CIFAR_MEAN, std=CIFAR_STD, augment=transform)
    val_loader = TensorLoader(xv[vi], yv[vi], max(batch_size, 512), mean=CIFAR_MEAN, std=CIFAR_STD)
    return DataBundle("cifar10", train_loader, val_loader, (3, 32, 32), 10, generator)


def imagefolder(root: str, image_size: int = 224, batch_size: int = 64, num_workers: int = 2,
                subset: int | None = None, augment: dict | None = None, *, seed: int = 0) -> DataBundle:
    """Images under ``root/train`` and ``root/val`` (one folder per class), resized and center-cropped.

    ``augment`` changes the training images only; with ``resized_crop_scale`` a random resized
    crop of the whole image replaces the resize and center crop.
    """
    from torch.utils.data import DataLoader, Subset
    from torchvision.datasets import ImageFolder
    from torchvision.transforms import v2

    image_size = int(image_size)
    augmentation = build_augment(augment, image_size)
    root_path = Path(root)
    for split in ("train", "val"):
        if not (root_path / split).is_dir():
            raise UserError(f"image folder '{root_path / split}' not found: data.root must hold train/ and val/ "
                            f"with one sub-folder per class (nas-cli prep-imagenet writes this layout)")
    resize = [v2.Resize(round(image_size * 8 / 7), antialias=True), v2.CenterCrop(image_size)]
    to_float = [v2.ToDtype(torch.float32, scale=True), v2.Normalize(IMAGENET_MEAN, IMAGENET_STD)]
    val_transform = v2.Compose([v2.ToImage(), *resize, *to_float])
    train_transform = val_transform
    if augmentation is not None:
        # augmented while still uint8 (cheaper to crop and resize); the random resized crop sizes it itself
        own_size = augmentation.resized_crop_scale is not None
        train_transform = v2.Compose([v2.ToImage(), *([] if own_size else resize), augmentation.pipeline, *to_float])
    train_ds = ImageFolder(str(root_path / "train"), transform=train_transform)
    val_ds = ImageFolder(str(root_path / "val"), transform=val_transform)
    if train_ds.classes != val_ds.classes:
        raise UserError(f"train/ and val/ under '{root}' hold different class folders")
    if subset:
        train_ds = Subset(train_ds, stratified_cap(np.arange(len(train_ds)), np.array(train_ds.targets), subset, 0))
        val_ds = Subset(val_ds, stratified_cap(np.arange(len(val_ds)), np.array(val_ds.targets), subset, 0))
    generator = torch.Generator().manual_seed(seed)
    common = {"batch_size": batch_size, "num_workers": num_workers, "pin_memory": torch.cuda.is_available(),
              "persistent_workers": num_workers > 0}
    train_loader = DataLoader(train_ds, shuffle=True, generator=generator, drop_last=False, **common)
    val_loader = DataLoader(val_ds, shuffle=False, **common)
    n_classes = len(train_ds.dataset.classes if subset else train_ds.classes)
    return DataBundle("imagefolder", train_loader, val_loader, (3, image_size, image_size), n_classes, generator)
