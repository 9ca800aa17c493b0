"""Detection data: the procedural shapes set (rules, determinism, boxes that match the pixels) and the
COCO-format folder reader (round trip, resize, layouts, errors)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.ops import box_iou

from nas_cli.data.coco import coco
from nas_cli.data.shapes import CLASSES, make_shapes, shapes, write_coco
from nas_cli.errors import UserError

SMALL = dict(n_train=48, n_val=24, batch_size=16)


def objects(targets: torch.Tensor) -> torch.Tensor:
    """The real rows (class >= 0) of [N, M, 5] targets, as [K, 5]."""
    return targets[targets[..., 0] >= 0]


def bright_box(image: torch.Tensor) -> list[float]:
    """Tight box (pixel edges) of the pixels whose brightest channel is above 127: the objects are at least
    0.65 * 255 there and the background at most 0.35 * 255, so this finds them from the image alone."""
    ys, xs = torch.nonzero(image.amax(0) > 127, as_tuple=True)
    return [xs.min().item(), ys.min().item(), xs.max().item() + 1, ys.max().item() + 1]


def test_same_seed_same_tensors_other_seed_differs_and_val_has_its_own_stream():
    a, b = shapes(**SMALL), shapes(**SMALL)
    for part in ("train", "val"):
        assert torch.equal(getattr(a, part).x, getattr(b, part).x)
        assert torch.equal(getattr(a, part).y, getattr(b, part).y)
    other = shapes(**SMALL, data_seed=1)
    assert not torch.equal(a.train.x, other.train.x) and not torch.equal(a.val.y, other.val.y)
    longer = shapes(**{**SMALL, "n_train": 80})
    assert torch.equal(longer.val.x, a.val.x) and torch.equal(longer.val.y, a.val.y)
    assert not torch.equal(longer.train.x[:48], a.train.x)  # the train stream is drawn in other chunks: fine


def test_every_box_follows_the_rules():
    max_objects, min_size, max_size, overlap, size = 5, 10, 24, 0.25, 56
    images, targets = make_shapes(
        400,
        np.random.default_rng(3),
        image_size=size,
        max_objects=max_objects,
        min_size=min_size,
        max_size=max_size,
        max_overlap=overlap,
    )
    assert images.dtype == torch.uint8 and images.shape == (400, 3, size, size)
    assert targets.dtype == torch.float32 and targets.shape == (400, max_objects, 5)
    real = targets[..., 0] >= 0
    assert real.sum(1).min() >= 1  # every image has an object
    assert torch.equal(targets[~real], torch.tensor([-1.0, 0, 0, 0, 0]).expand(int((~real).sum()), 5))
    # padding only after the real rows
    assert torch.equal(real, torch.sort(real.int(), dim=1, descending=True, stable=True).values.bool())
    rows = objects(targets)
    cls, box = rows[:, 0].long(), rows[:, 1:]
    assert set(cls.tolist()) == set(range(len(CLASSES)))
    assert (box >= 0).all() and (box[:, 2:] <= size).all()
    w, h = box[:, 2] - box[:, 0], box[:, 3] - box[:, 1]
    assert (w > 0).all() and (h > 0).all() and (box == box.round()).all()
    shape = cls != CLASSES.index("digit")
    # a shape fills its s x s cell: its box is that square; a digit's box fits its ink inside the cell, its
    # longer side at most the side and (thin strokes can fade when scaled down) at least half the smallest side
    assert torch.equal(w[shape], h[shape]) and w[shape].min() >= min_size and w[shape].max() <= max_size
    longer = torch.maximum(w, h)[~shape]
    assert longer.max() <= max_size and longer.min() >= min_size // 2
    most = []
    for one in targets:
        b = objects(one)[:, 1:]
        iou = box_iou(b, b) - torch.eye(len(b))
        most.append(iou.max())
        # painted later over earlier: no box is more than half covered by the boxes drawn after it (pixel count)
        cover = torch.zeros(len(b), size, size, dtype=torch.bool)
        for j, (x1, y1, x2, y2) in enumerate(b.long().tolist()):
            cover[j, y1:y2, x1:x2] = True
        for j in range(len(b) - 1):
            assert (cover[j] & cover[j + 1 :].any(0)).sum() <= 0.5 * cover[j].sum()
    most = torch.stack(most)
    assert most.max() <= overlap + 1e-6 and (most > 0.1).float().mean() > 0.1  # overlaps happen, up to the cap


def test_a_box_is_where_the_object_is_drawn():
    images, targets = make_shapes(120, np.random.default_rng(0), classes=["square"], max_objects=1, noise=0, clutter=0)
    for image, (cls, x1, y1, x2, y2) in zip(images, targets[:, 0].tolist()):
        x1, y1, x2, y2 = int(x1), int(y1), int(x2), int(y2)
        assert cls == 0 and bright_box(image) == [x1, y1, x2, y2]
        inside = image[:, y1:y2, x1:x2]
        # one flat colour inside, different from the background just outside each edge
        assert (inside == inside[:, :1, :1]).all()
        edges = [
            image[:, y1:y2, x1 - 1] if x1 > 0 else None,
            image[:, y1:y2, x2] if x2 < 64 else None,
            image[:, y1 - 1, x1:x2] if y1 > 0 else None,
            image[:, y2, x1:x2] if y2 < 64 else None,
        ]
        for edge in filter(lambda e: e is not None, edges):
            assert (edge != inside[:, 0, :1]).any(0).all()
    # every other class too: the box is the tight box of what was painted, a digit's of its ink
    images, targets = make_shapes(120, np.random.default_rng(1), max_objects=1, noise=0, clutter=0)
    assert all(bright_box(image) == t[1:].tolist() for image, t in zip(images, targets[:, 0]))


def test_class_subset_by_name_and_unknown_name():
    data = shapes(**SMALL, classes=["digit", "circle"])
    assert data.classes == ["digit", "circle"] and data.num_classes == 2
    assert set(objects(data.train.y)[:, 0].tolist()) == {0.0, 1.0}
    with pytest.raises(UserError, match="hexagon.*square, circle, triangle"):
        shapes(**SMALL, classes=["square", "hexagon"])


def test_loader_batch_is_normalised_images_and_float_targets():
    data = shapes(**SMALL)
    x, y = next(iter(data.val))
    assert x.dtype == torch.float32 and x.shape == (24, 3, 64, 64) and y.shape == (24, 4, 5)
    assert y.dtype == torch.float32
    raw = data.val.x.double() / 255
    mean = (data.train.x.double() / 255).mean((0, 2, 3)).view(1, 3, 1, 1)
    std = (data.train.x.double() / 255).std((0, 2, 3)).view(1, 3, 1, 1)
    assert torch.allclose(x.double(), (raw - mean) / std, atol=1e-4)
    assert data.in_shape == (3, 64, 64) and data.classes == list(CLASSES) and data.num_classes == 6


@pytest.fixture(scope="module")
def drawn():
    """A few generated images and their targets, written once as a COCO folder."""
    return make_shapes(10, np.random.default_rng(7), max_objects=3)


def test_coco_round_trip_reads_back_the_same_images_and_boxes(tmp_path, drawn):
    images, targets = drawn
    write_coco(tmp_path, images, targets, CLASSES)
    annotations = json.loads((tmp_path / "annotations.json").read_text())
    assert annotations["categories"][0] == {"id": 1, "name": "square"}
    first = objects(targets[:1])[0]
    assert annotations["annotations"][0]["bbox"] == pytest.approx(
        [*first[1:3].tolist(), *(first[3:] - first[1:3]).tolist()]
    )
    data = coco(tmp_path, image_size=64, val_size=0)
    assert data.classes == list(CLASSES) and data.num_classes == 6 and len(data.val.x) == 0
    assert torch.equal(data.train.x, images)  # PNG is lossless
    m = data.train.y.shape[1]
    assert m == int((targets[..., 0] >= 0).sum(1).max())
    assert torch.allclose(data.train.y, targets[:, :m], atol=0.5)


def test_coco_resize_scales_boxes_by_the_factors(tmp_path, drawn):
    images, targets = drawn
    write_coco(tmp_path, images, targets, CLASSES)
    data = coco(tmp_path, image_size=[32, 96], val_size=0)  # [height, width]
    assert data.train.x.shape == (10, 3, 32, 96) and data.in_shape == (3, 32, 96)
    m = data.train.y.shape[1]
    expected = targets[:, :m] * torch.tensor([1, 96 / 64, 32 / 64, 96 / 64, 32 / 64])
    expected[targets[:, :m, 0] < 0] = torch.tensor([-1.0, 0, 0, 0, 0])
    assert torch.allclose(data.train.y, expected, atol=1e-4)


def test_coco_random_split_subset_and_train_val_folders(tmp_path, drawn):
    images, targets = drawn
    write_coco(tmp_path / "one", images, targets, CLASSES)
    a = coco(tmp_path / "one", val_size=0.3)
    b = coco(tmp_path / "one", val_size=3, data_seed=1)
    assert len(a.train.x) == 7 and len(a.val.x) == 3 and len(b.val.x) == 3
    rows = {tuple(img.flatten()[:64].tolist()) for img in images}
    assert {tuple(img.flatten()[:64].tolist()) for img in torch.cat([a.train.x, a.val.x])} == rows
    assert not torch.equal(a.val.x, b.val.x)  # data_seed picks other images
    assert len(coco(tmp_path / "one", val_size=0.3, subset=4).train.x) == 4
    write_coco(tmp_path / "two" / "train", images[:6], targets[:6], CLASSES)
    write_coco(tmp_path / "two" / "val", images[6:], targets[6:], CLASSES)
    split = coco(tmp_path / "two", val_size=0.5)  # ignored: the folders are the splits
    assert torch.equal(split.train.x, images[:6]) and torch.equal(split.val.x, images[6:])
    assert torch.allclose(split.val.y, targets[6:, : split.val.y.shape[1]], atol=0.5)
    assert split.val_split.startswith("val/")


def write_json(root, images=None, annotations=None, categories=None, drop=()):
    """A hand-made COCO folder with one 20x10 image (a.png)."""
    (root / "images").mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (20, 10), (200, 10, 10)).save(root / "images" / "a.png")
    data = {
        "images": images or [{"id": 5, "file_name": "a.png", "width": 20, "height": 10}],
        "annotations": annotations or [],
        "categories": categories or [{"id": 3, "name": "cat"}],
    }
    for key in drop:
        data.pop(key)
    (root / "annotations.json").write_text(json.dumps(data))
    return root


def test_coco_keeps_crowds_skips_empty_boxes_clips_and_maps_category_ids(tmp_path):
    ann = [
        {"id": 1, "image_id": 5, "category_id": 7, "bbox": [2, 1, 4, 3], "iscrowd": 0},
        {"id": 2, "image_id": 5, "category_id": 3, "bbox": [0, 0, 5, 5], "iscrowd": 1},  # crowd: class -2 - 0
        {"id": 3, "image_id": 5, "category_id": 3, "bbox": [18, 8, 10, 10]},  # clipped to the image
        {"id": 4, "image_id": 5, "category_id": 3, "bbox": [25, 2, 3, 3]},
    ]  # outside: no area left, skipped
    images = [{"id": 5, "file_name": "a.png"}, {"id": 6, "file_name": "b.png"}]
    write_json(
        tmp_path, images=images, annotations=ann, categories=[{"id": 7, "name": "dog"}, {"id": 3, "name": "cat"}]
    )
    Image.new("L", (40, 20), 0).save(tmp_path / "images" / "b.png")  # grey, twice the size, no annotation: kept
    data = coco(tmp_path, image_size=[10, 20], val_size=0)
    assert data.classes == ["cat", "dog"]  # ids 3, 7 -> classes 0, 1, in order of id
    assert data.train.y.tolist() == [[[1, 2, 1, 6, 4], [-2, 0, 0, 5, 5], [0, 18, 8, 20, 10]], [[-1, 0, 0, 0, 0]] * 3]
    assert data.train.x[0, :, 0, 0].tolist() == [200, 10, 10] and data.train.x.shape == (2, 3, 10, 20)


@pytest.mark.parametrize(
    "case, match",
    [
        ("no_root", "no such folder"),
        ("no_json", "no annotations.json"),
        ("not_coco", "not a COCO annotations file.*categories"),
        ("not_json", "not a readable JSON"),
        ("missing_image", "gone.png: missing"),
        ("unreadable_image", "a.png: cannot read"),
        ("unknown_category", "annotation 9 has category_id 4, which is not among the categories"),
    ],
)
def test_coco_errors_are_one_clear_line(tmp_path, case, match):
    root = tmp_path / "data"
    if case != "no_root":
        root.mkdir()
    if case == "not_coco":
        write_json(root, drop=("categories",))
    elif case == "not_json":
        (root / "annotations.json").write_text("{images: ")
    elif case == "missing_image":
        write_json(root, images=[{"id": 1, "file_name": "gone.png"}])
    elif case == "unreadable_image":
        write_json(root)
        (root / "images" / "a.png").write_bytes(b"not a png")
    elif case == "unknown_category":
        write_json(root, annotations=[{"id": 9, "image_id": 5, "category_id": 4, "bbox": [0, 0, 2, 2]}])
    with pytest.raises(UserError, match=match) as error:
        coco(root)
    assert "\n" not in str(error.value)
