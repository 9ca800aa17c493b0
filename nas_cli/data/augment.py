"""Training-time data augmentation from ``torchvision.transforms.v2``, configured by ``data.augment``.

Only training batches are augmented; validation data never is. Randomness comes from
torch's global RNG (host data), or from a generator on the data's device (device-resident
data, ``Augment.batch(x, generator=...)``), so a seeded run is reproducible and a resumed
run continues exactly either way.

With a generator, a batch costs no host sync: every random draw is made on the device and
every step is a batched tensor op (no ``.item()``, ``.tolist()`` or ``nonzero``), so the
host can queue the training step right behind it.

MixUp/CutMix (``mixup_alpha``, ``cutmix_alpha``: :class:`Mixing`) mixes whole training
batches and their labels after the per-image steps, with the same generator.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TypedDict

import torch
import torch.nn.functional as F

from nas_cli.errors import UserError

# every key of ``data.augment`` with its "off" value
DEFAULTS: dict[str, object] = {
    "hflip": False,
    "crop_padding": 0,
    "resized_crop_scale": None,
    "color_jitter": 0.0,
    "cutout": 0,
    "mixup_alpha": 0.0,
    "cutmix_alpha": 0.0,
}


class _Rand(TypedDict):
    """The keywords of every random draw: where it comes from and where it lands."""

    generator: torch.Generator | None
    device: torch.device | None


@dataclass
class Draws:
    """One batch's random parameters, one row (or column) per image; None for a step that is off."""

    boxes: torch.Tensor | None = None  # (n, 4) resized-crop boxes: top, left, height, width
    shifts: torch.Tensor | None = None  # (2, n) crop offsets (top, left) into the zero-padded image
    flips: torch.Tensor | None = None  # (n,) bool: mirror this image
    factors: torch.Tensor | None = None  # (n, k) colour-jitter factors: brightness, contrast[, saturation]
    order: torch.Tensor | None = None  # (n, k) the order each image gets its k adjustments in
    centres: tuple[torch.Tensor, torch.Tensor] | None = None  # cutout centres, rows and columns, (n, 1) each


class Augment:
    """Augments one (C, H, W) image with :meth:`__call__`, or a whole batch with :meth:`batch`.

    Steps, in order: random resized crop, shift by a zero-padded random crop, horizontal
    flip, color jitter, cutout. Each image gets its own random parameters. ``mixing``
    (MixUp/CutMix, None when off) mixes images and labels of a whole batch afterwards; being
    about labels too, it is the loader's to call (``TensorLoader``), not part of these steps. ``fill``: the
    per-channel value (in [0, 1]) cutout paints, the data's mean, so that a hole is 0 after
    normalization as in DeVries & Taylor's and DARTS's code (which cut normalized images).
    """

    def __init__(
        self,
        size: tuple[int, int],
        channels: int,
        *,
        hflip: bool,
        crop_padding: int,
        resized_crop_scale: tuple[float, float] | None,
        color_jitter: float,
        cutout: int = 0,
        fill: Sequence[float] | float = 0.0,
        mixup_alpha: float = 0.0,
        cutmix_alpha: float = 0.0,
    ):
        from torchvision.transforms import v2  # imported here: torchvision is slow to import

        # whole-batch mixing, after the per-image steps: the loader calls it with the labels (see Mixing)
        self.mixing = Mixing(mixup_alpha, cutmix_alpha) if mixup_alpha or cutmix_alpha else None

        self.hflip, self.crop_padding = hflip, crop_padding
        self.resized_crop_scale, self.color_jitter = resized_crop_scale, color_jitter
        self.cutout = cutout
        self.fill = torch.as_tensor(fill, dtype=torch.float32).flatten().expand(channels).reshape(channels, 1, 1)
        # saturation needs color: grey images get brightness and contrast only
        self.jitter_ops = 3 if channels == 3 else 2
        strength = (color_jitter, color_jitter, color_jitter if channels == 3 else 0.0)
        steps = [
            None
            if resized_crop_scale is None
            else v2.RandomResizedCrop(size, scale=resized_crop_scale, antialias=True),
            v2.RandomCrop(size, padding=crop_padding) if crop_padding else None,
            v2.RandomHorizontalFlip() if hflip else None,
            v2.ColorJitter(*strength) if color_jitter else None,
            self._cutout_one if cutout else None,
        ]
        # v2.Compose refuses an empty list (only mixing on): the identity then
        self.pipeline = v2.Compose([s for s in steps if s is not None] or [v2.Identity()])

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        """One image (a tensor or a ``tv_tensors.Image``, uint8 or float in [0, 1])."""
        return self.pipeline(image)

    def batch(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """A float batch (N, C, H, W) in [0, 1]: what :meth:`__call__` does to each image, vectorized.

        Same distributions as the v2 transforms (one Python call per image would cost
        more than a training step of a small network). ``generator``: None draws from torch's
        global RNG (host data, as always); a generator on ``x``'s device makes the batch
        without a host sync (device-resident data), its crops by one batched gather.
        """
        draws = self.draw(len(x), *x.shape[-2:], generator=generator, device=x.device if generator else None)
        return self.apply(x, draws, gather=generator is not None)

    def draw(
        self,
        n: int,
        height: int,
        width: int,
        *,
        generator: torch.Generator | None = None,
        device: torch.device | None = None,
    ) -> Draws:
        """The random parameters of ``n`` images, drawn in one fixed order (the host path's order, so a
        seed gives the same augmentation whether the data sits on the host or on the device)."""
        rand: _Rand = {"generator": generator, "device": device}
        d = Draws()
        if self.resized_crop_scale is not None:
            d.boxes = random_boxes(n, height, width, self.resized_crop_scale, **rand)
        if self.crop_padding:
            d.shifts = torch.randint(0, 2 * self.crop_padding + 1, (2, n), **rand)
        if self.hflip:
            d.flips = torch.rand(n, **rand) < 0.5
        if self.color_jitter:
            low, high = max(0.0, 1 - self.color_jitter), 1 + self.color_jitter
            d.factors = torch.empty(n, self.jitter_ops, device=device).uniform_(low, high, generator=generator)
            d.order = torch.rand(n, self.jitter_ops, **rand).argsort(1)
        if self.cutout:
            d.centres = torch.randint(0, height, (n, 1), **rand), torch.randint(0, width, (n, 1), **rand)
        return d

    def apply(self, x: torch.Tensor, d: Draws, *, gather: bool = False) -> torch.Tensor:
        """The steps, in order, with the parameters ``d``; ``gather``: sync-free kernels throughout
        (one gather for the shifts, a select for the jitter order) instead of the host's faster
        per-image slices and row subsets."""
        if d.boxes is not None:
            x = resized_crops(x, d.boxes)
        if d.shifts is not None:
            x = random_shift(x, self.crop_padding, d.shifts, gather=gather)
        if d.flips is not None:
            x = torch.where(d.flips.view(-1, 1, 1, 1), x.flip(-1), x)
        if d.factors is not None:
            assert d.order is not None  # drawn together with the factors
            x = jitter(x, d.factors, d.order, select=gather)
        if d.centres is not None:
            x = cutout(x, self.cutout, self.fill, centres=d.centres)
        return x

    def _cutout_one(self, image: torch.Tensor) -> torch.Tensor:
        """Cutout of one image in the per-image pipeline (uint8 there: the fill scales to 0..255)."""
        from torchvision import tv_tensors

        fill = (self.fill * 255).round().to(image.dtype) if image.dtype == torch.uint8 else self.fill
        out = cutout(image.unsqueeze(0), self.cutout, fill)[0]
        return tv_tensors.wrap(out, like=image) if isinstance(image, tv_tensors.TVTensor) else out


@dataclass
class MixDraws:
    """One batch's MixUp/CutMix parameters, 0-d tensors (on the data's device: no host sync); None when off."""

    mixup_lam: torch.Tensor | None = None  # MixUp's lambda ~ Beta(mixup_alpha, mixup_alpha)
    cutmix_lam: torch.Tensor | None = None  # CutMix's lambda ~ Beta(cutmix_alpha, cutmix_alpha), before the box
    cut: torch.Tensor | None = None  # bool: with both on, whether this batch gets CutMix (else MixUp)
    centre: tuple[torch.Tensor, torch.Tensor] | None = None  # CutMix box centre: row, column


class Mixing:
    """MixUp (Zhang et al. 2018) and CutMix (Yun et al. 2019) of a training batch, as
    ``torchvision.transforms.v2.MixUp`` / ``CutMix`` (and ``RandomChoice`` of the two, p = 1/2
    each, when both are on, as torchvision's and timm's reference scripts do).

    As v2: one lambda per batch, each image paired with its neighbour in the (already shuffled)
    batch (``roll(1)``), CutMix's box centred uniformly with half-sides ``int(sqrt(1 - lam) / 2 * side)``
    cut at the borders and the label weight corrected to the area kept. Written out here rather
    than calling v2 because v2 draws from torch's global RNG with host syncs (``float(lam)``,
    ``int(box)``); these draws come from the loader's generator, on the data's device.
    Labels become soft (N, classes) targets: the loss is cross-entropy with probabilities.
    """

    def __init__(self, mixup_alpha: float = 0.0, cutmix_alpha: float = 0.0):
        self.mixup_alpha, self.cutmix_alpha = float(mixup_alpha), float(cutmix_alpha)

    def __call__(
        self, x: torch.Tensor, y: torch.Tensor, num_classes: int, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The mixed batch and its soft labels; ``generator`` as ``Augment.batch``'s (None: torch's global RNG)."""
        draws = self.draw(*x.shape[-2:], generator=generator, device=x.device if generator else None)
        return self.apply(x, y, num_classes, draws)

    def draw(
        self, height: int, width: int, *, generator: torch.Generator | None = None, device: torch.device | None = None
    ) -> MixDraws:
        """The batch's parameters, in a fixed order: MixUp's lambda, CutMix's lambda, the choice, the centre."""
        rand: _Rand = {"generator": generator, "device": device}
        d = MixDraws()
        if self.mixup_alpha:
            d.mixup_lam = beta(self.mixup_alpha, **rand)
        if self.cutmix_alpha:
            d.cutmix_lam = beta(self.cutmix_alpha, **rand)
            if self.mixup_alpha:
                d.cut = torch.rand((), **rand) < 0.5
            d.centre = torch.randint(0, height, (), **rand), torch.randint(0, width, (), **rand)
        return d

    @staticmethod
    def apply(x: torch.Tensor, y: torch.Tensor, num_classes: int, d: MixDraws) -> tuple[torch.Tensor, torch.Tensor]:
        """Mix with the parameters ``d``: ``keep`` is the weight of each image's own pixels (lambda
        everywhere for MixUp, 0 inside the box and 1 outside for CutMix), ``lam`` its label's weight."""
        h, w = x.shape[-2:]
        keep: torch.Tensor | None = None
        lam: torch.Tensor | None = None
        if d.mixup_lam is not None:
            keep = lam = d.mixup_lam.to(x.device)
        if d.cutmix_lam is not None:
            assert d.centre is not None  # drawn together with CutMix's lambda
            box = cutmix_box(d.cutmix_lam.to(x.device), (c.to(x.device) for c in d.centre), h, w)
            outside = ~box_mask(box, h, w)
            kept = 1 - (box[2] - box[0]) * (box[3] - box[1]) / (h * w)  # the area actually kept, as v2
            if d.cut is None:
                keep, lam = outside.to(x.dtype), kept.float()
            else:
                assert keep is not None and lam is not None  # the choice is drawn only with MixUp on too
                cut = d.cut.to(x.device)
                keep, lam = torch.where(cut, outside.to(x.dtype), keep), torch.where(cut, kept.float(), lam)
        assert keep is not None and lam is not None, "neither MixUp nor CutMix is on"
        target = y.float() if y.is_floating_point() else F.one_hot(y, num_classes).float()
        mixed = x * keep + x.roll(1, 0) * (1 - keep)
        return mixed, target * lam + target.roll(1, 0) * (1 - lam)


class MixCollate:
    """A ``DataLoader``'s ``collate_fn`` that mixes each collated training batch (folder data, whose
    images are transformed one by one in the workers). Its draws come from the worker's torch RNG,
    which the loader seeds from its generator every pass, so a seeded pass replays exactly."""

    def __init__(self, mixing: Mixing, num_classes: int):
        self.mixing, self.num_classes = mixing, int(num_classes)

    def __call__(self, batch: list) -> tuple[torch.Tensor, torch.Tensor]:
        from torch.utils.data import default_collate

        x, y = default_collate(batch)
        return self.mixing(x, y, self.num_classes)


def beta(alpha: float, *, generator: torch.Generator | None = None, device: torch.device | None = None) -> torch.Tensor:
    """One draw of Beta(alpha, alpha) as a 0-d tensor: the first part of a Dirichlet(alpha, alpha) draw,
    the sampler that ``torch.distributions.Beta`` uses, called directly because only it takes a generator."""
    return torch._sample_dirichlet(torch.full((2,), float(alpha), device=device), generator=generator)[0]


def cutmix_box(lam: torch.Tensor, centre, height: int, width: int) -> torch.Tensor:
    """v2.CutMix's box (top, left, bottom, right; end-exclusive) for ``lam`` and a centre (row, column):
    half-sides ``int(side * sqrt(1 - lam) / 2)``, cut at the image's borders."""
    row, col = centre
    r = 0.5 * (1 - lam).sqrt()
    half_h, half_w = (r * height).long(), (r * width).long()  # int() of a positive number: floor
    return torch.stack(
        [
            (row - half_h).clamp(min=0),
            (col - half_w).clamp(min=0),
            (row + half_h).clamp(max=height),
            (col + half_w).clamp(max=width),
        ]
    )


def box_mask(box: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """(1, 1, height, width) bool: True inside ``box`` (top, left, bottom, right)."""
    rows = torch.arange(height, device=box.device)
    cols = torch.arange(width, device=box.device)
    inside_y = (rows >= box[0]) & (rows < box[2])
    inside_x = (cols >= box[1]) & (cols < box[3])
    return (inside_y[:, None] & inside_x[None, :]).view(1, 1, height, width)


def cutout(
    x: torch.Tensor, size: int, fill: torch.Tensor, centres: tuple[torch.Tensor, torch.Tensor] | None = None
) -> torch.Tensor:
    """Paint a ``size`` x ``size`` square of each image (N, C, H, W) with ``fill`` (C, 1, 1).

    As DeVries & Taylor (2017) and DARTS's training code: the centre is uniform over the whole
    image, the square is cut at the borders (so holes near an edge are smaller), every image
    gets one. ``centres``: each image's hole centre (rows, columns; (n, 1) each), else drawn
    from torch's global RNG.
    """
    n, _, h, w = x.shape
    if centres is None:
        centres = torch.randint(0, h, (n, 1)), torch.randint(0, w, (n, 1))
    centre_y, centre_x = (c.to(x.device) for c in centres)
    half = size // 2
    rows, cols = torch.arange(h, device=x.device), torch.arange(w, device=x.device)
    inside_y = (rows >= centre_y - half) & (rows < centre_y + half)  # (n, h)
    inside_x = (cols >= centre_x - half) & (cols < centre_x + half)  # (n, w)
    hole = (inside_y[:, :, None] & inside_x[:, None, :]).unsqueeze(1)
    return torch.where(hole, fill.to(x.device, x.dtype), x)


def random_shift(
    x: torch.Tensor, padding: int, offsets: torch.Tensor | None = None, *, gather: bool = False
) -> torch.Tensor:
    """``v2.RandomCrop(size, padding)`` for a batch: zero-pad, then crop each image at its own offset.

    ``offsets``: (2, n) top and left offsets into the padded image, in [0, 2 * padding]; else drawn
    from torch's global RNG. ``gather``: one batched gather (no host sync: what device-resident
    data needs) instead of per-image slices (several times faster on a CPU, but each slice needs
    its offset on the host).
    """
    n, c, h, w = x.shape
    padded = F.pad(x, (padding,) * 4)
    if offsets is None:
        offsets = torch.randint(0, 2 * padding + 1, (2, n))
    if not gather:
        top, left = offsets.tolist()
        return torch.stack([image[:, i : i + h, j : j + w] for image, i, j in zip(padded, top, left)])
    top, left = offsets.to(x.device)
    rows = (top[:, None] + torch.arange(h, device=x.device)).view(n, 1, h, 1).expand(n, c, h, w + 2 * padding)
    cols = (left[:, None] + torch.arange(w, device=x.device)).view(n, 1, 1, w).expand(n, c, h, w)
    return padded.gather(2, rows).gather(3, cols)


def random_boxes(
    n: int,
    height: int,
    width: int,
    scale: tuple[float, float],
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
    tries: int = 10,
    *,
    generator: torch.Generator | None = None,
    device: torch.device | None = None,
) -> torch.Tensor:
    """``v2.RandomResizedCrop``'s crop boxes (top, left, height, width), one row per image.

    As v2: up to ``tries`` draws of area and log-uniform aspect ratio, the first that fits
    wins; an image with none gets the center crop. Drawn from ``generator`` on ``device`` (default:
    torch's global RNG, on the CPU).
    """
    area = height * width * torch.empty(n, tries, device=device).uniform_(*scale, generator=generator).double()
    aspect = (
        torch.empty(n, tries, device=device)
        .uniform_(math.log(ratio[0]), math.log(ratio[1]), generator=generator)
        .exp()
        .double()
    )
    w, h = (area * aspect).sqrt().round().long(), (area / aspect).sqrt().round().long()
    fits = (w > 0) & (w <= width) & (h > 0) & (h <= height)
    first = fits.long().argmax(1, keepdim=True)  # index of the first fitting try
    h, w = h.gather(1, first).squeeze(1), w.gather(1, first).squeeze(1)
    top = (torch.rand(n, generator=generator, device=device) * (height - h + 1)).long()  # uniform in [0, height - h]
    left = (torch.rand(n, generator=generator, device=device) * (width - w + 1)).long()
    boxes = torch.stack([top, left, h, w], 1)
    # v2's fallback: the whole image, cut to the nearest allowed aspect ratio, centered
    fh, fw = height, width
    if width / height < ratio[0]:
        fh = int(round(width / ratio[0]))
    elif width / height > ratio[1]:
        fw = int(round(height * ratio[1]))
    fallback = ((height - fh) // 2, (width - fw) // 2, fh, fw)
    ok = fits.any(1)
    # column by column with Python scalars: a constant tensor would be a host-to-device copy (a sync)
    return torch.stack([torch.where(ok, boxes[:, k], v) for k, v in enumerate(fallback)], 1)


def resized_crops(x: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
    """Each image's box (top, left, height, width) resized back to the full size, bilinear.

    Boxes never exceed the image, so this only enlarges, where v2's antialiased resize
    is plain bilinear interpolation (``align_corners=False``): computed one axis at a time.
    """
    h, w = x.shape[-2:]
    x = _interpolate_axis(x, boxes[:, 0], boxes[:, 2], h, dim=2)
    return _interpolate_axis(x, boxes[:, 1], boxes[:, 3], w, dim=3)


def _interpolate_axis(x: torch.Tensor, start: torch.Tensor, length: torch.Tensor, size: int, dim: int) -> torch.Tensor:
    """Resample ``x`` along ``dim`` from [start, start + length) to ``size`` points, per image."""
    scale = (length / size).float().unsqueeze(1)
    position = ((torch.arange(size, device=x.device) + 0.5) * scale - 0.5).clamp(min=0)  # (n, size), inside the box
    below = position.floor().long()
    weight = position - below
    last = (length - 1).unsqueeze(1)
    below, above = below.minimum(last), (below + 1).minimum(last)  # stay inside the box
    shape = [len(x), 1, 1, 1]
    shape[dim] = size
    expand = list(x.shape)
    expand[dim] = size

    def take(index: torch.Tensor) -> torch.Tensor:
        return x.gather(dim, (start.unsqueeze(1) + index).view(shape).expand(expand))

    weight = weight.view(shape)
    return take(below) * (1 - weight) + take(above) * weight


def jitter(x: torch.Tensor, factors: torch.Tensor, order: torch.Tensor, *, select: bool = False) -> torch.Tensor:
    """v2's brightness, contrast and (3 channels) saturation adjustments with each image's own factors.

    ``factors[i, k]`` is image i's factor for adjustment k (0 brightness, 1 contrast,
    2 saturation); ``order[i]`` the order image i gets them in, as v2 draws it per image.
    ``select``: at each step compute every adjustment for the whole batch and keep each image's
    own (k times the arithmetic, but no host sync), instead of adjusting only the images that
    take it (whose row indices the host must know).
    """
    from torchvision.transforms.v2.functional import rgb_to_grayscale

    def grey(image: torch.Tensor) -> torch.Tensor:
        return image if image.shape[1] == 1 else rgb_to_grayscale(image)

    def blend(image: torch.Tensor, other, factor: torch.Tensor) -> torch.Tensor:
        return (image * factor + other * (1 - factor)).clamp(0, 1)  # v2's _blend on float images

    adjustments = [
        lambda image, f: blend(image, 0.0, f),
        lambda image, f: blend(image, grey(image).mean(dim=(1, 2, 3), keepdim=True), f),
        lambda image, f: blend(image, grey(image), f),
    ][: factors.shape[1]]
    if select:
        for step in range(order.shape[1]):
            out = x
            for kind, adjust in enumerate(adjustments):
                mine = (order[:, step] == kind).view(-1, 1, 1, 1)
                out = torch.where(mine, adjust(x, factors[:, kind].view(-1, 1, 1, 1)), out)
            x = out
        return x
    x = x.clone()
    for step in range(order.shape[1]):
        for kind, adjust in enumerate(adjustments):
            rows = (order[:, step] == kind).nonzero().squeeze(1)  # the images whose step-th adjustment is this
            x[rows] = adjust(x[rows], factors[rows, kind].view(-1, 1, 1, 1))
    return x


def build_augment(
    augment: Mapping | None, image_size: int | Sequence[int], mean: Sequence[float] | float = 0.0
) -> Augment | None:
    """The augmentation ``augment`` (the ``data.augment`` block) asks for, or None when all is off.

    ``image_size``: the input shape (channels, height, width), or an int for square RGB images.
    ``mean``: the data's per-channel mean in [0, 1] (what cutout paints).
    """
    options = parse(augment)
    if not any(options.values()):
        return None
    shape = (3, int(image_size), int(image_size)) if isinstance(image_size, int) else tuple(map(int, image_size))
    if len(shape) != 3:
        raise UserError(
            f"data.augment works on images (channels, height, width), not on inputs of shape {shape}; "
            f"turn it off for this data"
        )
    if options["color_jitter"] and shape[0] not in (1, 3):
        raise UserError(f"data.augment.color_jitter needs 1 or 3 channels, not {shape[0]}; set it to 0")
    if options["cutout"] > min(shape[1:]):
        raise UserError(f"data.augment.cutout={options['cutout']} is larger than the {shape[1]}x{shape[2]} images")
    return Augment(shape[1:], shape[0], **options, fill=mean)


def parse(augment: Mapping | None) -> dict:
    """``augment`` checked and completed with the defaults; a bad key or value is a ``UserError``."""
    if augment is not None and not isinstance(augment, Mapping):
        raise UserError(f"data.augment must be a block of keys ({', '.join(DEFAULTS)}), not {augment!r}")
    augment = dict(augment or {})
    unknown = sorted(set(augment) - set(DEFAULTS))
    if unknown:
        raise UserError(
            f"unknown data.augment key(s) {', '.join(map(str, unknown))}; valid keys: {', '.join(DEFAULTS)}"
        )
    options = {**DEFAULTS, **augment}
    hflip, padding, scale, strength, hole, mixup, cutmix = (options[k] for k in DEFAULTS)
    if not isinstance(hflip, bool):
        raise UserError(f"data.augment.hflip must be true or false, not {hflip!r}")
    if isinstance(padding, bool) or not isinstance(padding, int) or padding < 0:
        raise UserError(f"data.augment.crop_padding must be a whole number of pixels >= 0, not {padding!r}")
    if scale is not None:
        scale = tuple(scale) if isinstance(scale, Sequence) and not isinstance(scale, str) else (scale,)
        if len(scale) != 2 or not all(isinstance(s, (int, float)) for s in scale) or not 0 < scale[0] <= scale[1] <= 1:
            raise UserError(
                f"data.augment.resized_crop_scale must be [low, high] with 0 < low <= high <= 1 "
                f"(e.g. [0.5, 1.0]) or null, not {list(scale)}"
            )
        scale = (float(scale[0]), float(scale[1]))
    if isinstance(strength, bool) or not isinstance(strength, (int, float)) or strength < 0:
        raise UserError(f"data.augment.color_jitter must be a number >= 0, not {strength!r}")
    if isinstance(hole, bool) or not isinstance(hole, int) or hole < 0:
        raise UserError(f"data.augment.cutout must be the hole's side in pixels (>= 0, 0: off), not {hole!r}")
    for key, alpha in (("mixup_alpha", mixup), ("cutmix_alpha", cutmix)):
        if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not 0 <= alpha < math.inf:
            raise UserError(
                f"data.augment.{key} must be the Beta(alpha, alpha) parameter, a number >= 0 "
                f"(0: off; 1.0 is a common choice), not {alpha!r}"
            )
    return {
        "hflip": hflip,
        "crop_padding": padding,
        "resized_crop_scale": scale,
        "color_jitter": float(strength),
        "cutout": hole,
        "mixup_alpha": float(mixup),
        "cutmix_alpha": float(cutmix),
    }
