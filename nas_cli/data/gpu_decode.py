"""Image-folder batches decoded on the GPU (``data.decode=cuda``).

The loader's workers only read each file's bytes; the main process hands a batch of them to
nvJPEG (``torchvision.io.decode_jpeg(list, device="cuda")``, one batched call), and
:class:`ImageBatcher` resizes, crops and augments the decoded images where they are. The
workers then do almost no work, so a few of them keep a GPU fed where CPU decoding needs
a core per few hundred images a second.

:class:`ImageBatcher` is the part after decoding; it runs on any device, so the tests check it
on the CPU against the CPU path's per-image v2 transforms.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from nas_cli.data.augment import Augment, random_boxes
from nas_cli.errors import UserError


def check_cuda_decode() -> None:
    """``data.decode=cuda`` needs a CUDA GPU and a torchvision whose ``decode_jpeg`` decodes batches there."""
    if not torch.cuda.is_available():
        raise UserError("data.decode=cuda decodes JPEGs on a CUDA GPU, and none is visible here; use data.decode=cpu")
    import inspect

    from torchvision.io import decode_jpeg

    if "device" not in inspect.signature(decode_jpeg).parameters:
        raise UserError(
            "data.decode=cuda needs torchvision >= 0.19 (batched decode_jpeg on the GPU); "
            "upgrade torchvision or use data.decode=cpu"
        )


def read_bytes(path: str) -> torch.Tensor:
    """A file's bytes as a 1-D uint8 tensor (what the workers hand over with data.decode=cuda)."""
    from torchvision.io import read_file

    return read_file(path)


def collate_bytes(batch: list[tuple[torch.Tensor, int]]) -> tuple[list[torch.Tensor], torch.Tensor]:
    """A batch of (bytes, label) pairs as the list of byte tensors (sizes differ) and the labels."""
    return [data for data, _ in batch], torch.tensor([label for _, label in batch], dtype=torch.long)


class ImageBatcher:
    """Decoded uint8 images (each (C, H, W), sizes differing) to one normalized float batch.

    Without augmentation (or a resized crop): each image resized (shorter side to
    ``size * 8 / 7``, antialiased) and center-cropped, as the CPU path's evaluation transform.
    With ``augment.resized_crop_scale``: each image's random box cut and resized to ``size``
    instead (the boxes drawn on the host: cutting images of different sizes needs their
    coordinates there). These per-image steps are v2's own functions; the rest of the
    augmentation (shift, flip, jitter, cutout) runs once on the whole batch, its draws from
    ``generator`` on the batch's device.
    """

    def __init__(self, size: int, mean: Sequence[float], std: Sequence[float], augment: Augment | None = None):
        self.size, self.augment = int(size), augment
        self.mean = torch.as_tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
        self.std = torch.as_tensor(std, dtype=torch.float32).view(1, -1, 1, 1)

    def __call__(
        self,
        images: Sequence[torch.Tensor],
        *,
        host: torch.Generator | None = None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """``host``: draws the resized crops' boxes; ``generator`` (on the images' device): the rest."""
        from torchvision.transforms.v2 import functional as TF

        size = [self.size, self.size]
        scale = self.augment.resized_crop_scale if self.augment is not None else None
        out = []
        for image in images:
            if scale is not None:
                height, width = image.shape[-2:]
                top, left, h, w = random_boxes(1, height, width, scale, generator=host)[0].tolist()
                out.append(TF.resized_crop(image, top, left, h, w, size, antialias=True))
            else:
                resized = TF.resize(image, [round(self.size * 8 / 7)], antialias=True)
                out.append(TF.center_crop(resized, size))
        x = torch.stack(out).float().div_(255)
        if self.augment is not None:
            draws = self.augment.draw(len(x), self.size, self.size, generator=generator, device=x.device)
            draws.boxes = None  # done above, image by image
            x = self.augment.apply(x, draws, gather=x.device.type != "cpu")
        return (x - self.mean.to(x.device)) / self.std.to(x.device)


class GpuDecoded:
    """A ``DataLoader`` of file bytes (``collate_bytes``) whose batches are decoded and made on a GPU.

    Training passes are reproducible: each pass draws one seed from ``generator`` (the loader's
    order generator, saved in checkpoints) before the ``DataLoader`` draws its own, and the
    host and device generators of the crops and augmentation start from it.
    """

    on_device = "true"  # nothing to hold: the engine only tells it the run's device (place)
    nbytes = 0

    def __init__(self, loader, batcher: ImageBatcher, device: torch.device, generator: torch.Generator | None = None):
        self.loader, self.batcher, self.generator = loader, batcher, generator
        self.device = torch.device(device)
        self._draws = torch.Generator(self.device)

    def place(self, device: torch.device) -> GpuDecoded:
        self.device = torch.device(device)
        self._draws = torch.Generator(self.device)
        return self

    @property
    def sampler(self):
        return self.loader.sampler

    @property
    def batch_size(self) -> int:
        return self.loader.batch_size

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self):
        # the pass's draws happen here, at once, before any batch (as a DataLoader's own)
        seed = int(torch.randint(0, 2**62, (1,), generator=self.generator))
        return self._batches(seed, iter(self.loader))

    def _batches(self, seed: int, batches):
        from torchvision.io import ImageReadMode, decode_jpeg

        host = torch.Generator().manual_seed(seed)
        for i, (data, labels) in enumerate(batches):
            images = decode_jpeg(data, mode=ImageReadMode.RGB, device=self.device)
            x = self.batcher(images, host=host, generator=self._draws.manual_seed(seed + i))
            yield x, labels.to(self.device, non_blocking=True)
