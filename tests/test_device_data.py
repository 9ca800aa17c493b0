"""Data held on the training device (data.on_device) and image folders that keep a GPU fed.

Everything runs with device=cpu: a placed loader on the CPU takes the very path it takes on a
GPU (its own generator, sync-free batched augmentation), so what holds here holds there.
"""

from __future__ import annotations

import signal

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from nas_cli.data import resident
from nas_cli.data.augment import build_augment
from nas_cli.data.bundle import TensorLoader
from nas_cli.data.embedded import digits
from nas_cli.data.folders import IMAGENET_MEAN, IMAGENET_STD, default_workers, imagefolder
from nas_cli.data.gpu_decode import GpuDecoded, ImageBatcher, collate_bytes, read_bytes
from nas_cli.data.resumable import LoaderPass
from nas_cli.data.synthetic import synthetic
from nas_cli.engine.trainer import Trainer
from nas_cli.errors import UserError
from nas_cli.runs import checkpoint, signals
from nas_cli.runs.lifecycle import Run

CPU = torch.device("cpu")
EVERYTHING = {"hflip": True, "crop_padding": 2, "resized_crop_scale": [0.4, 1.0], "color_jitter": 0.4, "cutout": 4}


def images(n: int = 40, shape=(3, 10, 12)) -> torch.Tensor:
    return torch.rand(n, *shape, generator=torch.Generator().manual_seed(1)) * 0.9 + 0.1


def batches(loader) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [(x.clone(), y.clone()) for x, y in loader]


def test_placed_loader_gives_the_host_loaders_batches_when_augmentation_is_off():
    host, placed = digits(batch_size=50, seed=3), digits(batch_size=50, seed=3, on_device=True)
    assert resident.place_loaders([placed.train, placed.val, placed.test], CPU) == [placed.train, placed.val]
    assert placed.train.device == CPU and host.train.device is None
    for _ in range(2):  # two epochs: each its own permutation, drawn by the same generator
        for (xa, ya), (xb, yb) in zip(batches(host.train), batches(placed.train), strict=True):
            assert torch.equal(xa, xb) and torch.equal(ya, yb)
    for (xa, ya), (xb, yb) in zip(batches(host.val), batches(placed.val), strict=True):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    # auto on a CPU keeps the data on the host: nothing placed
    auto = digits(batch_size=50)
    assert auto.train.on_device == "auto" and resident.place_loaders([auto.train, auto.val], CPU) == []


def reference_cutout(image: torch.Tensor, size: int, cy: int, cx: int, fill: torch.Tensor) -> torch.Tensor:
    """DeVries & Taylor's rule written out: a size x size square centred at (cy, cx), cut at the borders."""
    out = image.clone()
    h, w = image.shape[-2:]
    y0, y1, x0, x1 = max(0, cy - size // 2), min(h, cy + size // 2), max(0, cx - size // 2), min(w, cx + size // 2)
    out[:, y0:y1, x0:x1] = fill.view(-1, 1, 1)
    return out


def test_placed_augmentation_matches_torchvision_v2_one_image_at_a_time():
    from torchvision.transforms.v2 import functional as TF

    x, pad = images(), 2
    augment = build_augment(EVERYTHING, x.shape[1:], mean=(0.3, 0.5, 0.7))
    g = torch.Generator().manual_seed(5)
    loader = TensorLoader(
        x, torch.arange(len(x)), 16, shuffle=True, generator=g, augment=augment, on_device="true"
    ).place(CPU)
    # the loader's documented draws, replayed by hand: the permutation, one seed a pass, one seed a batch
    replay = torch.Generator().set_state(g.get_state())
    torch.randperm(len(x), generator=replay)
    pass_seed = int(torch.randint(0, 2**62, (1,), generator=replay))
    adjust = (TF.adjust_brightness, TF.adjust_contrast, TF.adjust_saturation)
    flips, shifts = set(), set()
    for i, (xb, yb) in enumerate(loader):
        d = augment.draw(len(yb), 10, 12, generator=torch.Generator().manual_seed(pass_seed + i), device=CPU)
        for k, (image, index) in enumerate(zip(xb, yb.tolist())):
            want = TF.resized_crop(x[index], *d.boxes[k].tolist(), size=[10, 12], antialias=True)
            top, left = d.shifts[:, k].tolist()
            want = TF.crop(TF.pad(want, [pad]), top, left, 10, 12)  # v2.RandomCrop(padding) at this offset
            if d.flips[k]:
                want = TF.horizontal_flip(want)
            for step in d.order[k].tolist():
                want = adjust[step](want, d.factors[k, step].item())
            want = reference_cutout(want, 4, int(d.centres[0][k]), int(d.centres[1][k]), augment.fill.flatten())
            torch.testing.assert_close(image, want)
            flips.add(bool(d.flips[k]))
            shifts.add((top, left))
    assert flips == {True, False} and len(shifts) > 5  # each image its own draw


def test_a_placed_batch_needs_no_host_sync(monkeypatch):
    """Nothing in making a placed batch reads a tensor's value on the host (each read is a GPU sync)."""
    x = images(64)
    loader = TensorLoader(
        x,
        torch.arange(64),
        32,
        shuffle=True,
        generator=torch.Generator().manual_seed(0),
        augment=build_augment(EVERYTHING, x.shape[1:]),
        mean=(0.5,) * 3,
        std=(0.2,) * 3,
        on_device=True,
    ).place(CPU)
    it = iter(loader)  # the pass's host draws (permutation, seed) happen here, once a pass

    def sync(*args, **kwargs):
        raise AssertionError("a host sync while making a batch")

    for name in ("item", "tolist", "nonzero", "__int__", "__float__", "__bool__"):
        monkeypatch.setattr(torch.Tensor, name, sync)
    xb, _ = next(it)
    monkeypatch.undo()
    assert xb.shape == (32, 3, 10, 12)


def test_a_placed_pass_resumes_mid_way_at_the_very_same_batches():
    x = images(50)
    g = torch.Generator().manual_seed(2)
    loader = TensorLoader(
        x,
        torch.arange(50),
        8,
        shuffle=True,
        generator=g,
        on_device="true",
        augment=build_augment(EVERYTHING, x.shape[1:]),
    ).place(CPU)
    start = g.get_state()
    whole = batches(loader)
    g.manual_seed(99)  # the generator moves on; the pass's state restores it
    resumed = LoaderPass(loader, g, {"start": start, "taken": 3})
    rest = batches(resumed)
    assert len(rest) == len(whole) - 3
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(whole[3:], rest, strict=True))


def test_on_device_auto_places_what_fits_in_a_quarter_of_free_gpu_memory(monkeypatch):
    class Fake:  # a loader's placement interface, on a pretend GPU
        def __init__(self, policy: str, nbytes: int):
            self.on_device, self.nbytes, self.device = policy, nbytes, None

        def place(self, device):
            self.device = device
            return self

    gpu = torch.device("cuda", 0)
    monkeypatch.setattr(resident, "free_bytes", lambda device: 1000)
    train, val = Fake("auto", 200), Fake("auto", 40)
    assert resident.place_loaders([train, val, None], gpu) == [train, val]  # 240 < 1000 / 4
    big = [Fake("auto", 200), Fake("auto", 60)]
    assert resident.place_loaders(big, gpu) == [] and big[0].device is None  # 260 > 250: all stay on the host
    assert resident.place_loaders([Fake("false", 1)], gpu) == []
    forced = Fake("true", 900)
    assert resident.place_loaders([forced], gpu) == [forced]  # true: placed if it fits at all
    with pytest.raises(UserError, match="data.on_device=true: the data takes"):
        resident.place_loaders([Fake("true", 1001)], gpu)
    with pytest.raises(UserError, match="data.on_device"):
        synthetic(on_device="sometimes")


def tiny_fit(run_dir, stop_at: int | None = None, resume: bool = False) -> tuple[pd.DataFrame, dict]:
    """Two epochs on placed, augmented synthetic images; ``stop_at``: SIGTERM at that training step."""
    torch.manual_seed(0)
    data = synthetic(
        shape=[3, 8, 8],
        n_train=96,
        n_val=32,
        batch_size=16,
        on_device=True,
        seed=0,
        augment={"hflip": True, "crop_padding": 1, "color_jitter": 0.3, "cutout": 2},
    )
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Dropout(0.2), nn.Flatten(), nn.Linear(144, 10))
    steps = {"n": 0}

    def loss_fn(net, x, y):
        steps["n"] += 1
        if steps["n"] == stop_at:
            signals.request(signal.SIGTERM)  # stops at the safe point after this batch
        logits = net(x)
        return nn.functional.cross_entropy(logits, y), logits

    run = Run(run_dir, "train", seed=0, device="cpu", resume=resume)
    trainer = Trainer(epochs=2, device=CPU, progress=False)
    trainer.fit(
        model,
        torch.optim.SGD(model.parameters(), lr=0.1),
        data.train,
        data.val,
        run=run,
        generator=data.generator,
        loss_fn=loss_fn,
    )
    assert data.train.device == CPU  # the engine placed it
    return pd.read_csv(run_dir / "metrics.csv").drop(columns=["epoch_time_s", "samples_per_s"]), model.state_dict()


def test_engine_resumes_a_placed_augmented_run_mid_epoch_to_the_same_result(tmp_path):
    full, weights = tiny_fit(tmp_path / "full")
    with pytest.raises(signals.Interrupted):
        tiny_fit(tmp_path / "cut", stop_at=9)  # 6 training steps + 1 evaluation, then batch 2 of epoch 2
    saved = checkpoint.load(tmp_path / "cut" / "checkpoints" / "last.pt")
    assert saved["epoch"] == 1 and saved["tally"]["loader"]["taken"] == 2  # a mid-epoch checkpoint
    resumed, resumed_weights = tiny_fit(tmp_path / "cut", resume=True)
    pd.testing.assert_frame_equal(full, resumed, check_exact=True)
    assert all(torch.equal(weights[k], resumed_weights[k]) for k in weights)


def write_tree(root, sizes=((40, 30), (24, 36), (33, 33)), fmt: str = "JPEG") -> None:
    from PIL import Image

    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for cls in ("cat", "dog"):
            (root / split / cls).mkdir(parents=True)
            for i, (h, w) in enumerate(sizes):
                picture = Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8))
                picture.save(root / split / cls / f"{i}.{fmt.lower()}", format=fmt, quality=95)


def test_imagefolder_workers_default_to_cores_capped_at_8_persistent_with_prefetch(tmp_path, monkeypatch):
    import os

    write_tree(tmp_path)
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    for cores, expected in ((32, 8), (3, 3), (1, 1)):
        monkeypatch.setattr(os, "sched_getaffinity", lambda pid, n=cores: set(range(n)))
        assert default_workers() == expected
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")  # torchrun: four ranks share the node's cores
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(24)))
    assert default_workers() == 6
    data = imagefolder(str(tmp_path), image_size=16, batch_size=4)  # built, not iterated: no worker starts
    for loader in (data.train, data.val):
        assert loader.num_workers == 6 and loader.persistent_workers and loader.prefetch_factor == 4
        assert loader.pin_memory == torch.cuda.is_available()
    assert imagefolder(str(tmp_path), image_size=16, num_workers=0).train.prefetch_factor is None


@pytest.mark.skipif(torch.cuda.is_available(), reason="the error of a machine without CUDA")
def test_decode_cuda_without_cuda_is_a_one_line_user_error(tmp_path):
    write_tree(tmp_path)
    with pytest.raises(UserError, match="data.decode=cuda .* none is visible here; use data.decode=cpu") as ex:
        imagefolder(str(tmp_path), decode="cuda")
    assert "\n" not in str(ex.value)
    with pytest.raises(UserError, match="data.decode='gpu'"):
        imagefolder(str(tmp_path), decode="gpu")


def test_after_decoding_the_batch_is_what_the_cpu_path_makes(tmp_path):
    """The GPU-decode path's second half (ImageBatcher), run on the CPU: evaluation images equal the
    CPU path's v2 transforms; training ones are v2's resized crop and flip with the drawn parameters."""
    from torch.utils.data import DataLoader
    from torchvision.datasets import ImageFolder
    from torchvision.io import ImageReadMode, decode_jpeg
    from torchvision.transforms.v2 import functional as TF

    write_tree(tmp_path)
    cpu = imagefolder(str(tmp_path), image_size=16, batch_size=6, num_workers=0)
    expected, labels = next(iter(cpu.val))
    raw = DataLoader(ImageFolder(str(tmp_path / "val"), loader=read_bytes), batch_size=6, collate_fn=collate_bytes)
    data, raw_labels = next(iter(raw))
    decoded = decode_jpeg(data, mode=ImageReadMode.RGB)
    got = ImageBatcher(16, IMAGENET_MEAN, IMAGENET_STD)(decoded)
    assert torch.equal(raw_labels, labels)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)

    augment = build_augment({"hflip": True, "resized_crop_scale": [0.3, 1.0]}, 16, IMAGENET_MEAN)
    batcher = ImageBatcher(16, IMAGENET_MEAN, IMAGENET_STD, augment)
    got = batcher(decoded, host=torch.Generator().manual_seed(1), generator=torch.Generator().manual_seed(2))
    host = torch.Generator().manual_seed(1)
    from nas_cli.data.augment import random_boxes

    boxes = [random_boxes(1, *image.shape[-2:], (0.3, 1.0), generator=host)[0].tolist() for image in decoded]
    flips = augment.draw(6, 16, 16, generator=torch.Generator().manual_seed(2)).flips
    mean, std = torch.tensor(IMAGENET_MEAN).view(3, 1, 1), torch.tensor(IMAGENET_STD).view(3, 1, 1)
    for image, box, flip, out in zip(decoded, boxes, flips, got, strict=True):
        want = TF.resized_crop(image, *box, size=[16, 16], antialias=True).float() / 255
        want = TF.horizontal_flip(want) if flip else want
        torch.testing.assert_close(out, (want - mean) / std)
    assert flips.any() and not flips.all()

    # the wrapper (decoding on the CPU here): reproducible passes, given the order generator's state
    g = torch.Generator().manual_seed(0)
    loader = GpuDecoded(
        DataLoader(
            ImageFolder(str(tmp_path / "train"), loader=read_bytes),
            batch_size=4,
            shuffle=True,
            generator=g,
            collate_fn=collate_bytes,
        ),
        batcher,
        CPU,
        g,
    )
    state = g.get_state()
    first = batches(loader)
    g.set_state(state)
    again = batches(loader)
    assert len(first) == 2 and all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(first, again))
    assert first[0][0].shape == (4, 3, 16, 16)
