"""A COCO-format detection folder, read whole into memory.

Layout: ``root/annotations.json`` with the images in ``root/images/<file_name>``, split at random into train
and val; or ``root/train/`` and ``root/val/``, each with its own ``annotations.json`` and ``images/``, used as
the two splits. Images are decoded with PIL in the main process and held as uint8 tensors: the folder is
expected to be small (thousands of images); a large dataset would need streaming, which this does not do.

An annotations file may come from elsewhere: its ``file_name`` values are names inside ``images/``, never paths
that leave it (absolute, or with ``..``).

Crowd annotations (``iscrowd=1``: one box over a group of objects) are kept as ignore regions, as COCO's own
evaluation treats them: a row of class ``crowd_class(c) = -2 - c`` (``CROWD`` or below). Below 0, the detector's
assignment and losses pass it over like a padding row (class -1); ``nas_cli.detection.evaluate.ground_truth``
reads it back as class ``c`` with ``iscrowd`` 1, and a detection matched to it counts neither way.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from nas_cli.data.bundle import DataBundle, tensor_bundle
from nas_cli.data.shapes import channel_stats
from nas_cli.errors import UserError

ANNOTATIONS = "annotations.json"
CROWD = -2  # rows of class CROWD or below are crowd regions: class crowd_class(c) for a crowd of class c


def crowd_class(c):
    """The stored class of a crowd region of class ``c``, and back (``-2 - c`` is its own inverse); ints, floats
    or tensors."""
    return CROWD - c


@dataclass
class Split:
    """One annotations file, decoded: uint8 images [N, 3, H, W] and their boxes as (class, x1, y1, x2, y2) rows."""

    images: torch.Tensor
    rows: list[np.ndarray]  # one [objects, 5] float32 array an image (zero rows: no object)
    classes: list[str]
    category_ids: list[int]


def coco(
    root: str | os.PathLike,
    batch_size: int = 32,
    image_size: int | Sequence[int] = 64,
    val_size: float | int = 0.1,
    subset: int | None = None,
    data_seed: int = 0,
    on_device: str | bool = "auto",
    *,
    seed: int = 0,
) -> DataBundle:
    """Detection data from a COCO-format folder (see the module docstring for the layouts).

        ``image_size``: an int (square) or [height, width]. Every image is converted to RGB and resized to it,
        boxes scaled by the same factors: a plain resize rather than a letterbox keeps the code simple, and the
        detector sees one size anyway. Boxes (COCO's [x, y, w, h]) become xyxy in pixels, clipped to the image;
        boxes with no area left after clipping are skipped; ``iscrowd`` annotations are kept as ignore regions (class
    ``crowd_class(c)``, see the module docstring). Category ids map to
        classes 0..K-1 in order of id; ``classes`` holds their names. Images without annotations are kept (all
        padding rows: class -1, box zeros).

        With one ``annotations.json``, ``val_size`` (a fraction in [0, 1), or a number of images) goes to val, a
        random split of images seeded by ``data_seed`` (0: everything trains, val is empty; both keep file order).
        With ``train/`` and ``val/`` folders, those are the splits and ``val_size`` is ignored.
        ``subset`` caps the number of training images (a seeded random choice). ``seed`` orders the batches.
    """
    root = Path(root).expanduser()
    height, width = check_image_size(image_size)
    if not root.is_dir():
        raise UserError(f"data.root={root}: no such folder; point data.root at a folder with {ANNOTATIONS} and images/")
    rng = np.random.default_rng(int(data_seed))
    if (root / "train" / ANNOTATIONS).is_file() and (root / "val" / ANNOTATIONS).is_file():
        train = read_split(root / "train", height, width)
        val = read_split(root / "val", height, width)
        if train.category_ids != val.category_ids or train.classes != val.classes:
            raise UserError(f"{root}: train/{ANNOTATIONS} and val/{ANNOTATIONS} list different categories")
        train_idx = np.arange(len(train.images))
        val_idx = np.arange(len(train.images), len(train.images) + len(val.images))
        images, rows = torch.cat([train.images, val.images]), train.rows + val.rows
        classes, val_split = train.classes, f"val/ folder ({len(val.images)} images)"
    elif (root / ANNOTATIONS).is_file():
        whole = read_split(root, height, width)
        images, rows, classes = whole.images, whole.rows, whole.classes
        n_val = val_count(val_size, len(images))
        order = rng.permutation(len(images))
        train_idx, val_idx = np.sort(order[n_val:]), np.sort(order[:n_val])
        val_split = f"random {n_val} of {len(images)} images (data_seed={data_seed})"
    else:
        raise UserError(
            f"{root}: no {ANNOTATIONS} (nor train/{ANNOTATIONS} and val/{ANNOTATIONS}); "
            f"put a COCO annotations file there"
        )
    train_idx = cap(train_idx, subset, rng)
    mean, std = channel_stats(images[torch.from_numpy(train_idx)])
    bundle = tensor_bundle(
        "coco",
        images,
        pad_rows(rows),
        torch.from_numpy(train_idx),
        torch.from_numpy(val_idx),
        len(classes),
        batch_size=batch_size,
        seed=seed,
        mean=mean,
        std=std,
        val_split=val_split,
        on_device=on_device,
    )
    bundle.classes = classes
    return bundle


def check_image_size(image_size) -> tuple[int, int]:
    """(height, width) from an int or a [height, width] list (Hydra passes a ListConfig)."""
    if isinstance(image_size, (int, np.integer)) and not isinstance(image_size, bool):
        sizes = [int(image_size)] * 2
    else:
        try:
            sizes = [int(s) for s in image_size]
        except (TypeError, ValueError):
            sizes = []
    if len(sizes) != 2 or min(sizes) < 1:
        raise UserError(f"data.image_size={image_size!r}: an int (square) or [height, width], positive")
    return sizes[0], sizes[1]


def val_count(val_size, n: int) -> int:
    """How many of ``n`` images go to val: a fraction in [0, 1) of them (rounded), or a count below ``n``."""
    if isinstance(val_size, bool) or not isinstance(val_size, (int, float)) or val_size < 0:
        raise UserError(f"data.val_size must be a fraction in [0, 1) or a number of images, not {val_size!r}")
    if isinstance(val_size, float) and val_size < 1:
        count = int(round(val_size * n))
    elif float(val_size).is_integer():
        count = int(val_size)
    else:
        raise UserError(f"data.val_size={val_size}: a fraction must be below 1")
    if count >= n and n > 0:
        raise UserError(f"data.val_size={val_size} leaves no training image of the {n}; use fewer")
    return count


def cap(idx: np.ndarray, subset: int | None, rng: np.random.Generator) -> np.ndarray:
    """At most ``subset`` of the training indices, a seeded random choice kept in file order."""
    if subset is None or subset >= len(idx):
        return idx
    if int(subset) < 1:
        raise UserError(f"data.subset={subset}: keep at least one training image (or null for all)")
    return np.sort(rng.choice(idx, int(subset), replace=False))


def read_split(folder: Path, height: int, width: int) -> Split:
    """Decode ``folder/annotations.json`` and every image it lists (``folder/images/<file_name>``)."""
    path = folder / ANNOTATIONS
    data = load_json(path)
    ids = sorted(check_categories(data["categories"], path))
    index = {cid: k for k, cid in enumerate(ids)}
    names = {int(c["id"]): str(c.get("name", c["id"])) for c in data["categories"]}
    entries = data["images"]
    if not entries:
        raise UserError(f"{path}: lists no images")
    position = {}
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict) or "id" not in entry or "file_name" not in entry:
            raise UserError(f"{path}: images[{i}] needs an id and a file_name")
        position[entry["id"]] = i
    images = torch.empty((len(entries), 3, height, width), dtype=torch.uint8)
    factors = []
    files = [image_file(folder / "images", entry["file_name"], path, i) for i, entry in enumerate(entries)]
    for i, file in enumerate(files):
        images[i], factor = read_image(file, path, height, width)
        factors.append(factor)
    rows: list[list[list[float]]] = [[] for _ in entries]
    for j, ann in enumerate(data["annotations"]):
        row = annotation_row(ann, j, path, index, position, factors, height, width)
        if row is not None:
            rows[position[ann["image_id"]]].append(row)
    arrays = [np.asarray(r, np.float32).reshape(-1, 5) for r in rows]
    return Split(images, arrays, [names[cid] for cid in ids], ids)


def load_json(path: Path) -> dict:
    """The parsed annotations file, checked to have COCO's three lists."""
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise UserError(f"{path}: not a readable JSON file ({error})") from None
    missing = [
        k
        for k in ("images", "annotations", "categories")
        if not isinstance(data, dict) or not isinstance(data.get(k), list)
    ]
    if missing:
        raise UserError(f"{path}: not a COCO annotations file (no list {', '.join(missing)})")
    return data


def image_file(images: Path, file_name, listed_in: Path, i: int) -> Path:
    """``images/<file_name>``, refused unless the name stays inside ``images/``: relative, no ``..``."""
    name = str(file_name)
    absolute = name.startswith(("/", "\\")) or name[1:2] == ":"  # a drive letter counts too
    if not name or absolute or ".." in name.replace("\\", "/").split("/") or "\0" in name:
        raise UserError(
            f"{listed_in}: images[{i}].file_name={name!r} is not a name inside {images} "
            f"(absolute, or with '..'): refused"
        )
    return images / name


def check_categories(categories: list, path: Path) -> list[int]:
    """The category ids, each an int, no repeats."""
    try:
        ids = [int(c["id"]) for c in categories]
    except (TypeError, KeyError, ValueError):
        raise UserError(f"{path}: every category needs an integer id") from None
    if len(set(ids)) != len(ids):
        raise UserError(f"{path}: category ids repeat")
    return ids


def read_image(file: Path, listed_in: Path, height: int, width: int) -> tuple[torch.Tensor, tuple[float, float]]:
    """One image as RGB uint8 [3, height, width] and the factors (x, y) that took it there."""
    from PIL import Image, UnidentifiedImageError

    if not file.is_file():
        raise UserError(f"{file}: missing, but {listed_in} lists it")
    try:
        with Image.open(file) as opened:
            image = opened.convert("RGB")
    except (OSError, UnidentifiedImageError, ValueError) as error:
        raise UserError(f"{file}: cannot read this image ({error})") from None
    factor = (width / image.width, height / image.height)
    if image.size != (width, height):
        image = image.resize((width, height), Image.Resampling.BILINEAR)
    return torch.from_numpy(np.asarray(image).copy()).permute(2, 0, 1), factor


def annotation_row(
    ann, j: int, path: Path, index: dict, position: dict, factors: list, height: int, width: int
) -> list[float] | None:
    """(class, x1, y1, x2, y2) of one annotation, scaled and clipped (a crowd's class: ``crowd_class(c)``); None
    for an empty box."""
    if not isinstance(ann, dict):
        raise UserError(f"{path}: annotations[{j}] is not an object")
    if ann.get("category_id") not in index:
        raise UserError(
            f"{path}: annotation {ann.get('id', j)} has category_id {ann.get('category_id')!r}, "
            f"which is not among the categories {sorted(index)}"
        )
    if ann.get("image_id") not in position:
        raise UserError(
            f"{path}: annotation {ann.get('id', j)} has image_id {ann.get('image_id')!r}, which is not among the images"
        )
    box = ann.get("bbox")
    if not isinstance(box, (list, tuple)) or len(box) != 4:
        raise UserError(f"{path}: annotation {ann.get('id', j)} needs a bbox [x, y, width, height]")
    fx, fy = factors[position[ann["image_id"]]]
    x, y, w, h = (float(v) for v in box)
    x1, x2 = np.clip([x * fx, (x + w) * fx], 0, width)
    y1, y2 = np.clip([y * fy, (y + h) * fy], 0, height)
    if x2 <= x1 or y2 <= y1:
        return None
    label = index[ann["category_id"]]
    return [float(crowd_class(label) if ann.get("iscrowd", 0) else label), float(x1), float(y1), float(x2), float(y2)]


def pad_rows(rows: list[np.ndarray]) -> torch.Tensor:
    """[N, M, 5] float32, M the most objects of any image (at least 1), padded with (-1, 0, 0, 0, 0)."""
    most = max([len(r) for r in rows] + [1])
    out = np.zeros((len(rows), most, 5), np.float32)
    out[:, :, 0] = -1
    for i, r in enumerate(rows):
        out[i, : len(r)] = r
    return torch.from_numpy(out)
