"""Data augmentation: training batches only, each image its own random draw, seeded by torch."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from nas_cli.data.augment import build_augment
from nas_cli.data.bundle import TensorLoader
from nas_cli.data.folders import imagefolder
from nas_cli.data.synthetic import synthetic
from nas_cli.errors import UserError

ALL_ON = {"hflip": True, "crop_padding": 2, "resized_crop_scale": [0.5, 1.0], "color_jitter": 0.4}


def images(n: int = 48, shape=(3, 8, 8)) -> torch.Tensor:
    """Distinct values in (0, 1] with no zeros, so shifts and mirrors can be told apart."""
    return torch.rand(n, *shape, generator=torch.Generator().manual_seed(0)) * 0.9 + 0.1


def loader(x: torch.Tensor, augment: dict, batch_size: int = 16) -> TensorLoader:
    """Labels are sample indices: each augmented image can be matched with its original."""
    return TensorLoader(
        x,
        torch.arange(len(x)),
        batch_size,
        shuffle=True,
        generator=torch.Generator().manual_seed(0),
        augment=build_augment(augment, x.shape[1:]),
    )


def test_validation_is_never_augmented_even_with_everything_on():
    plain, augmented = (
        synthetic(shape=[3, 12, 12], n_train=64, n_val=40),
        synthetic(shape=[3, 12, 12], n_train=64, n_val=40, augment=ALL_ON),
    )
    val = [x for x, _ in augmented.val]
    assert all(torch.equal(a, b) for a, b in zip(val, (x for x, _ in augmented.val)))  # a second pass
    assert all(torch.equal(a, b) for a, b in zip(val, (x for x, _ in plain.val)))  # the un-augmented data
    # ... while the training batches do change (same order: same seed)
    assert not torch.equal(next(iter(augmented.train))[0], next(iter(plain.train))[0])


def test_imagefolder_augments_training_images_only(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    for cls in ("cat", "dog"):
        for i in range(3):  # the same pictures under train/ and val/
            picture = Image.fromarray(rng.integers(0, 255, (20, 24, 3), dtype=np.uint8))
            for split in ("train", "val"):
                (tmp_path / split / cls).mkdir(parents=True, exist_ok=True)
                picture.save(tmp_path / split / cls / f"{i}.png")
    common = {"image_size": 12, "batch_size": 6, "num_workers": 0}
    plain = imagefolder(str(tmp_path), **common)
    everything = imagefolder(str(tmp_path), augment=ALL_ON, **common)
    originals = next(iter(plain.val))[0]
    assert torch.equal(originals, next(iter(everything.val))[0])
    assert next(iter(everything.train))[0].shape == (6, 3, 12, 12)  # the random resized crop sizes it itself
    flipped = next(iter(imagefolder(str(tmp_path), augment={"hflip": True}, **common).train))[0]
    for image in flipped:
        assert any(torch.equal(image, o) or torch.equal(image, o.flip(-1)) for o in originals)


def test_hflip_gives_each_image_either_itself_or_its_exact_mirror_and_both_occur():
    x = images()
    flipped = []
    for xb, yb in loader(x, {"hflip": True}):
        original = x[yb]
        mirrored = (xb == original.flip(-1)).flatten(1).all(1)
        assert torch.all(mirrored | (xb == original).flatten(1).all(1))
        flipped.append(mirrored.tolist())
    assert sum(map(len, flipped)) == len(x)
    assert any(any(batch) and not all(batch) for batch in flipped)  # per image, not one coin per batch


def test_crop_padding_shifts_each_image_within_the_padding_with_zeros_entering():
    x, pad = images(), 2
    shifts = set()
    for xb, yb in loader(x, {"crop_padding": pad}):
        padded = F.pad(x[yb], (pad,) * 4)
        for image, source in zip(xb, padded):
            found = [
                (top, left)
                for top in range(2 * pad + 1)
                for left in range(2 * pad + 1)
                if torch.equal(image, source[:, top : top + 8, left : left + 8])
            ]
            assert len(found) == 1, "not a shifted copy of its original"
            shifts.add(found[0])
    assert len(shifts) > 5  # each image gets its own offset, not one per batch


def test_color_jitter_changes_values_but_keeps_shape():
    for shape in ((3, 8, 8), (1, 8, 8)):  # grey images get brightness and contrast only
        x = images(16, shape)
        xb, yb = next(iter(loader(x, {"color_jitter": 0.5})))
        assert xb.shape == (16, *shape) and xb.dtype == torch.float32
        assert not torch.allclose(xb, x[yb]) and 0 <= xb.min() and xb.max() <= 1


def test_batched_kernels_match_torchvision_v2_image_by_image():
    from torchvision.transforms.v2 import functional as TF

    from nas_cli.data.augment import jitter, random_boxes, resized_crops

    for shape in ((3, 16, 12), (1, 10, 10)):
        x = images(32, shape)
        boxes = random_boxes(32, *shape[1:], scale=(0.2, 1.0))
        assert torch.all((boxes[:, 0] + boxes[:, 2] <= shape[1]) & (boxes[:, 1] + boxes[:, 3] <= shape[2]))
        expected = [
            TF.resized_crop(image, *box.tolist(), size=list(shape[1:]), antialias=True) for image, box in zip(x, boxes)
        ]
        torch.testing.assert_close(resized_crops(x, boxes), torch.stack(expected))

        kinds = 3 if shape[0] == 3 else 2
        factors, order = torch.rand(32, kinds) + 0.5, torch.rand(32, kinds).argsort(1)
        adjust = (TF.adjust_brightness, TF.adjust_contrast, TF.adjust_saturation)
        expected = []
        for image, f, steps in zip(x, factors, order.tolist()):
            for k in steps:
                image = adjust[k](image, f[k].item())
            expected.append(image)
        torch.testing.assert_close(jitter(x, factors, order), torch.stack(expected))


def test_same_torch_seed_gives_identical_augmented_batches():
    x = images()

    def batches(seed: int) -> list[torch.Tensor]:
        torch.manual_seed(seed)
        return [xb for xb, _ in loader(x, ALL_ON)]

    first, again, other = batches(0), batches(0), batches(1)
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    assert not all(torch.equal(a, b) for a, b in zip(first, other))


def test_augment_off_is_no_transform():
    assert build_augment(None, (1, 28, 28)) is None
    assert (
        build_augment({"hflip": False, "crop_padding": 0, "resized_crop_scale": None, "color_jitter": 0.0}, (1, 28, 28))
        is None
    )
    assert synthetic(shape=[20], n_train=8, n_val=8, augment={"hflip": False}).train.augment is None


def test_bad_augment_blocks_are_one_line_user_errors():
    with pytest.raises(UserError, match="valid keys: hflip, crop_padding, resized_crop_scale, color_jitter") as ex:
        build_augment({"vflip": True}, (3, 8, 8))
    assert "vflip" in str(ex.value) and "\n" not in str(ex.value)
    with pytest.raises(UserError, match="unknown data.augment key"):
        synthetic(augment={"rotate": 10})
    with pytest.raises(UserError, match="crop_padding"):
        build_augment({"crop_padding": -1}, (3, 8, 8))
    with pytest.raises(UserError, match="resized_crop_scale"):
        build_augment({"resized_crop_scale": [0.5]}, (3, 8, 8))
    with pytest.raises(UserError, match="works on images"):
        synthetic(shape=[20], augment={"hflip": True})
