"""Detections drawn and written: a trained detector on a folder of images (``mode=predict``), and a grid of
validation images with their detections after training (``detections.png``)."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from nas_cli.detection.evaluate import Postprocess, detect
from nas_cli.errors import UserError
from nas_cli.runs.record import atomic_write

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp")
DRAWN_SCORE = 0.3  # boxes drawn from this score up (every detection above score_threshold is in the JSON)
MIN_DRAWN_SIDE = 256  # small images are enlarged (nearest) before drawing, so boxes and labels are legible
PALETTE = [
    "#e6194b",
    "#3cb44b",
    "#ffe119",
    "#4363d8",
    "#f58231",
    "#911eb4",
    "#46f0f0",
    "#f032e6",
    "#bcf60c",
    "#fabebe",
    "#008080",
    "#e6beff",
]


class DetectorMeta:
    """What predicting needs besides the weights, saved as ``detector.json`` by the training run: the
    model's config, the input shape, the class names and the normalisation of the training data.

    The file may come from elsewhere: ``model`` is data until ``nas_cli.runs.saved_config.checked_node``
    has passed it (the predicting command does so before building anything)."""

    def __init__(self, model: dict, in_shape, classes: list[str], mean, std):
        if not isinstance(model, dict):
            raise TypeError(f"model is {type(model).__name__}, not a mapping")
        self.model, self.in_shape, self.classes = dict(model), [int(v) for v in in_shape], [str(c) for c in classes]
        self.mean, self.std = [float(v) for v in mean], [float(v) for v in std]
        if len(self.in_shape) != 3 or min(self.in_shape) < 1:
            raise ValueError(f"in_shape {self.in_shape} is not [channels, height, width]")
        if not self.classes:
            raise ValueError("no class names")

    def save(self, path: Path) -> None:
        atomic_write(path, lambda tmp: Path(tmp).write_text(json.dumps(vars(self), indent=2)))

    @classmethod
    def load(cls, path: Path) -> DetectorMeta:
        try:
            return cls(**json.loads(path.read_text()))
        except (OSError, ValueError, TypeError) as ex:
            raise UserError(f"{path} is not a detector.json written by `nas-cli detect`: {ex}") from ex

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """uint8 [B,3,H,W] -> the float input the model was trained on."""
        mean = torch.tensor(self.mean, device=x.device).view(1, -1, 1, 1)
        std = torch.tensor(self.std, device=x.device).view(1, -1, 1, 1)
        return (x.float() / 255 - mean) / std


def image_files(folder: str | Path | None) -> list[Path]:
    if not folder:
        raise UserError("mode=predict needs images=FOLDER (PNG or JPEG files)")
    path = Path(folder)
    if not path.is_dir():
        raise UserError(f"images={folder} is not a folder")
    files = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise UserError(f"images={folder} holds no {'/'.join(IMAGE_SUFFIXES)} files")
    return files


def write_png(image: torch.Tensor, path: Path) -> None:
    """uint8 [3,H,W] as a PNG, written whole or not at all."""
    from PIL import Image

    array = image.permute(1, 2, 0).contiguous().numpy()
    atomic_write(path, lambda tmp: Image.fromarray(array).save(tmp, format="PNG"))


def read_image(path: Path) -> torch.Tensor:
    """An image file as uint8 RGB [3, H, W]."""
    import numpy as np
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            return torch.from_numpy(np.asarray(image.convert("RGB")).copy()).permute(2, 0, 1)
    except (OSError, UnidentifiedImageError) as ex:
        raise UserError(f"cannot read image {path}: {ex}") from ex


def draw(image: torch.Tensor, found: dict[str, torch.Tensor], classes: list[str]) -> torch.Tensor:
    """``image`` (uint8 [3,H,W]) with the boxes scoring ``DRAWN_SCORE`` or more and their '<class> <score>'
    labels, enlarged to a legible size."""
    from torchvision.utils import draw_bounding_boxes

    found = {k: v[found["scores"] >= DRAWN_SCORE] for k, v in found.items()}
    scale = max(1, -(-MIN_DRAWN_SIDE // min(image.shape[1:])))
    big = image.repeat_interleave(scale, 1).repeat_interleave(scale, 2)
    if len(found["boxes"]) == 0:
        return big
    labels = [f"{classes[int(c)]} {float(s):.2f}" for c, s in zip(found["labels"], found["scores"])]
    colors = [PALETTE[int(c) % len(PALETTE)] for c in found["labels"]]
    return draw_bounding_boxes(big, found["boxes"].float() * scale, labels=labels, colors=colors, width=2)


@torch.inference_mode()
def predict_images(
    model,
    meta: DetectorMeta,
    files: list[Path],
    out_dir: Path,
    post: Postprocess,
    method: str,
    device: torch.device,
    batch_size: int = 64,
) -> list[dict]:
    """Detect in every file (resized to the model's input, boxes mapped back to the file's size); write
    ``out_dir/<stem>.png`` with the boxes drawn; return the detections, one record per image."""
    import torch.nn.functional as F

    out_dir.mkdir(parents=True, exist_ok=True)
    _, height, width = meta.in_shape
    model.eval()
    records = []
    for start in range(0, len(files), batch_size):
        chunk = files[start : start + batch_size]
        images = [read_image(p) for p in chunk]
        x = torch.stack(
            [
                F.interpolate(
                    im[None].float(), size=(height, width), mode="bilinear", antialias=True, align_corners=False
                )[0]
                .round()
                .clamp(0, 255)
                for im in images
            ]
        ).to(device)
        for path, image, found in zip(chunk, images, detect(model(meta.normalize(x)), post, method)):
            found = {k: v.cpu() for k, v in found.items()}
            sx, sy = image.shape[2] / width, image.shape[1] / height
            found["boxes"] = found["boxes"] * torch.tensor([sx, sy, sx, sy])
            png = draw(image, found, meta.classes)
            write_png(png, out_dir / f"{path.stem}.png")
            records.append(
                {
                    "image": path.name,
                    "width": image.shape[2],
                    "height": image.shape[1],
                    "detections": [
                        {
                            "class": meta.classes[int(c)],
                            "class_id": int(c),
                            "score": float(s),
                            "box": [round(float(v), 2) for v in b],
                        }
                        for b, s, c in zip(found["boxes"], found["scores"], found["labels"])
                    ],
                }
            )
    return records


@torch.inference_mode()
def detection_grid(
    model,
    loader,
    classes: list[str],
    mean,
    std,
    device: torch.device,
    post: Postprocess,
    path: Path,
    n: int = 16,
    method: str = "nms",
) -> Path:
    """The first ``n`` images of ``loader`` with their detections, in one PNG (a look at what the mAP means)."""
    from torchvision.utils import make_grid

    model.eval()
    x, _ = next(iter(loader))
    x = x[:n].to(device)
    found = detect(model(x), post, method)
    mean = torch.as_tensor(mean, device=x.device).view(1, -1, 1, 1)
    std = torch.as_tensor(std, device=x.device).view(1, -1, 1, 1)
    images = ((x * std + mean).clamp(0, 1) * 255).round().to(torch.uint8).cpu()
    drawn = [draw(im, {k: v.cpu() for k, v in f.items()}, classes) for im, f in zip(images, found)]
    grid = make_grid(torch.stack(drawn), nrow=4, padding=4, pad_value=255)
    write_png(grid, path)
    return path
