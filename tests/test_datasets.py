"""CIFAR-100, MNIST, Fashion-MNIST and SVHN read from local files in their real formats.

Each test writes a tiny file with the format's own writer (pickle, struct + gzip, scipy.io.savemat),
reads it back through the config's builder, and checks pixels, labels, the held-out split and that
the test set is exactly the test file. Every image carries its id in its first two pixels (train ids
from 0, test ids from 1,000), so a test can tell where each image it gets came from.
"""

from __future__ import annotations

import gzip
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import OmegaConf

from nas_cli.errors import UserError

CONF = Path(__file__).resolve().parents[1] / "conf" / "data"
TEST_ID = 1000


def build(name: str, root: Path, **overrides):
    """The builder as a run makes it: the shipped yaml, with ``overrides``, instantiated (Hydra's wrapper
    around an error taken off, as the CLI does)."""
    cfg = OmegaConf.load(CONF / f"{name}.yaml")
    cfg.root = str(root)
    for key, value in overrides.items():
        OmegaConf.update(cfg, key, value)
    try:
        return instantiate(cfg, seed=0)
    except InstantiationException as ex:
        raise ex.__cause__ from None


def images(n: int, first_id: int, shape: tuple[int, ...], channel_last: bool = False) -> np.ndarray:
    """``n`` random uint8 images of ``shape`` (channels, rows, columns); image k holds its id
    ``first_id + k`` in pixels (0, 0) and (0, 1) of channel 0 (before any layout change)."""
    x = np.random.default_rng(first_id).integers(0, 256, (n, *shape), dtype=np.uint8)
    ids = np.arange(first_id, first_id + n)
    x[:, 0, 0, 0], x[:, 0, 0, 1] = ids // 256, ids % 256
    return x


def raw_pixels(loader, mean, std) -> torch.Tensor:
    """The loader's images back as uint8 (undoing the scaling and normalization)."""
    xs = torch.cat([x for x, _ in loader])
    m, s = torch.tensor(mean).view(1, -1, 1, 1), torch.tensor(std).view(1, -1, 1, 1)
    return ((xs * s + m) * 255).round().to(torch.uint8)


def ids_of(loader, mean, std) -> list[int]:
    px = raw_pixels(loader, mean, std).long()
    return (px[:, 0, 0, 0] * 256 + px[:, 0, 0, 1]).tolist()


def labels_of(loader) -> torch.Tensor:
    return torch.cat([y for _, y in loader])


def check_split(data, mean, std, n_train: int, n_val: int, test_ids: list[int]) -> None:
    """Validation is ``n_val`` training images, disjoint from training; the test set is the test file."""
    train, val = ids_of(data.train, mean, std), ids_of(data.val, mean, std)
    assert len(val) == n_val == len(set(val)) and len(train) == n_train - n_val
    assert sorted(train + val) == list(range(n_train))  # together: the training file, each image once
    assert sorted(ids_of(data.test, mean, std)) == test_ids
    assert data.val_split == f"{n_val} held out from train"


# ---------------------------------------------------------------- CIFAR-100 (python pickles)


def write_cifar100(root: Path, n_train: int = 200, n_test: int = 100, bytes_keys: bool = True) -> Path:
    """``cifar-100-python/{train,test,meta}``: ``data`` (N, 3072) rows, fine label id % 100, coarse id % 20."""
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True)
    key = (lambda k: k.encode()) if bytes_keys else (lambda k: k)
    for name, n, first in (("train", n_train, 0), ("test", n_test, TEST_ID)):
        ids = np.arange(first, first + n)
        batch = {
            key("data"): images(n, first, (3, 32, 32)).reshape(n, 3072),
            key("fine_labels"): [int(i % 100) for i in ids],
            key("coarse_labels"): [int(i % 20) for i in ids],
        }
        with open(folder / name, "wb") as f:
            pickle.dump(batch, f)
    with open(folder / "meta", "wb") as f:
        pickle.dump(
            {
                key("fine_label_names"): [f"f{i}" for i in range(100)],
                key("coarse_label_names"): [f"c{i}" for i in range(20)],
            },
            f,
        )
    return folder


@pytest.mark.parametrize("bytes_keys", [True, False])
def test_cifar100_fine_labels_pixels_and_split(tmp_path, bytes_keys):
    from nas_cli.data.folders import CIFAR100_MEAN, CIFAR100_STD

    folder = write_cifar100(tmp_path, bytes_keys=bytes_keys)
    data = build("cifar100", tmp_path, val_size=100, batch_size=64)
    assert data.num_classes == 100 and data.in_shape == (3, 32, 32) and data.classes[:2] == ["f0", "f1"]
    check_split(data, CIFAR100_MEAN, CIFAR100_STD, 200, 100, list(range(TEST_ID, TEST_ID + 100)))
    # pixels: the test images in file order, exactly as written; labels: the fine ones
    with open(folder / "test", "rb") as f:
        written = pickle.load(f)[b"data" if bytes_keys else "data"].reshape(-1, 3, 32, 32)
    assert torch.equal(raw_pixels(data.test, CIFAR100_MEAN, CIFAR100_STD), torch.from_numpy(written))
    assert labels_of(data.test).tolist() == [i % 100 for i in range(TEST_ID, TEST_ID + 100)]
    assert torch.bincount(labels_of(data.val), minlength=100).tolist() == [1] * 100  # stratified


def test_cifar100_coarse_labels(tmp_path):
    from nas_cli.data.folders import CIFAR100_MEAN, CIFAR100_STD

    write_cifar100(tmp_path)
    data = build("cifar100", tmp_path, val_size=40, label="coarse")
    assert data.num_classes == 20 and data.classes == [f"c{i}" for i in range(20)]
    val_ids = ids_of(data.val, CIFAR100_MEAN, CIFAR100_STD)
    assert labels_of(data.val).tolist() == [i % 20 for i in val_ids]
    assert torch.bincount(labels_of(data.val)).tolist() == [2] * 20
    with pytest.raises(UserError, match="data.label='medium'"):
        build("cifar100", tmp_path, label="medium")


# ---------------------------------------------------------------- MNIST / Fashion-MNIST (IDX)


def idx_bytes(array: np.ndarray) -> bytes:
    """An unsigned-byte IDX file: 0, 0, type 0x08, number of dims, big-endian dims, then the values."""
    return bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape) + array.tobytes()


def write_idx(folder: Path, n_train: int = 40, n_test: int = 20, gz: bool = False) -> dict[str, np.ndarray]:
    """The four MNIST files (labels: id % 10) in ``folder``, optionally gzipped; returns what was written."""
    folder.mkdir(parents=True, exist_ok=True)
    arrays = {}
    for part, n, first in (("train", n_train, 0), ("t10k", n_test, TEST_ID)):
        arrays[f"{part}-images-idx3-ubyte"] = images(n, first, (1, 28, 28))[:, 0]
        arrays[f"{part}-labels-idx1-ubyte"] = (np.arange(first, first + n) % 10).astype(np.uint8)
    for name, array in arrays.items():
        if gz:
            with gzip.open(folder / f"{name}.gz", "wb") as f:
                f.write(idx_bytes(array))
        else:
            (folder / name).write_bytes(idx_bytes(array))
    return arrays


@pytest.mark.parametrize(
    "name, layout, gz",
    [("mnist", "MNIST/raw", True), ("fashion_mnist", ".", False), ("fashion_mnist", "FashionMNIST/raw", True)],
)
def test_idx_files_read_back_pixels_labels_and_split(tmp_path, name, layout, gz):
    from nas_cli.data import idx

    mean, std = (idx.MNIST_MEAN, idx.MNIST_STD) if name == "mnist" else (idx.FASHION_MEAN, idx.FASHION_STD)
    written = write_idx(tmp_path / layout, gz=gz)
    data = build(name, tmp_path, val_size=10, batch_size=16)
    assert data.name == name and data.in_shape == (1, 28, 28) and data.num_classes == 10
    check_split(data, mean, std, 40, 10, list(range(TEST_ID, TEST_ID + 20)))
    test_px = raw_pixels(data.test, mean, std)[:, 0]
    assert torch.equal(test_px, torch.from_numpy(written["t10k-images-idx3-ubyte"]))
    assert labels_of(data.test).tolist() == written["t10k-labels-idx1-ubyte"].tolist()
    batches = list(data.train)  # one pass (the training loader reshuffles every pass)
    train_ids = ids_of(batches, mean, std)
    assert labels_of(batches).tolist() == [i % 10 for i in train_ids]  # each image keeps its own label
    again = build(name, tmp_path, val_size=10, data_seed=1)
    assert set(ids_of(again.val, mean, std)) != set(ids_of(data.val, mean, std))  # data_seed picks the split


def test_mnist_val_size_0_validates_on_the_test_file_and_subset_caps_every_part(tmp_path):
    from nas_cli.data.idx import MNIST_MEAN, MNIST_STD

    write_idx(tmp_path / "MNIST" / "raw")
    data = build("mnist", tmp_path, val_size=0)
    assert data.test is None and data.val_split == "test"
    assert sorted(ids_of(data.val, MNIST_MEAN, MNIST_STD)) == list(range(TEST_ID, TEST_ID + 20))
    assert sorted(ids_of(data.train, MNIST_MEAN, MNIST_STD)) == list(range(40))
    small = build("mnist", tmp_path, val_size=20, subset=10)
    sizes = [len(labels_of(loader)) for loader in (small.train, small.val, small.test)]
    assert sizes == [10, 10, 10] and torch.bincount(labels_of(small.test)).tolist() == [1] * 10


def test_a_corrupt_idx_file_is_one_clear_error(tmp_path):
    folder = tmp_path / "MNIST" / "raw"
    write_idx(folder)
    (folder / "train-labels-idx1-ubyte").write_bytes(b"\x00\x00\x0d\x01" + struct.pack(">I", 40) + bytes(160))
    with pytest.raises(UserError, match="train-labels-idx1-ubyte is not an unsigned-byte IDX file"):
        build("mnist", tmp_path)
    (folder / "train-labels-idx1-ubyte").write_bytes(b"\x00\x00\x08\x01" + struct.pack(">I", 40) + bytes(39))
    with pytest.raises(UserError, match="truncated or corrupt"):
        build("mnist", tmp_path)


# ---------------------------------------------------------------- SVHN (.mat)


def write_svhn(root: Path, n_train: int = 40, n_test: int = 20) -> dict[str, np.ndarray]:
    """``train_32x32.mat`` / ``test_32x32.mat``: X (32, 32, 3, N), y (N, 1) with the digit 0 stored as 10."""
    from scipy.io import savemat

    written = {}
    for name, n, first in (("train", n_train, 0), ("test", n_test, TEST_ID)):
        x = images(n, first, (3, 32, 32))  # (N, channels, rows, columns) -> SVHN's (rows, columns, channels, N)
        digits = np.arange(first, first + n) % 10
        savemat(
            root / f"{name}_32x32.mat",
            {"X": x.transpose(2, 3, 1, 0), "y": np.where(digits == 0, 10, digits).reshape(-1, 1).astype(np.uint8)},
        )
        written[name] = x
    return written


def test_svhn_reads_the_mat_layout_maps_10_to_0_and_splits(tmp_path):
    from nas_cli.data.svhn import SVHN_MEAN, SVHN_STD

    written = write_svhn(tmp_path)
    data = build("svhn", tmp_path, val_size=10)
    assert data.in_shape == (3, 32, 32) and data.num_classes == 10
    check_split(data, SVHN_MEAN, SVHN_STD, 40, 10, list(range(TEST_ID, TEST_ID + 20)))
    assert torch.equal(raw_pixels(data.test, SVHN_MEAN, SVHN_STD), torch.from_numpy(written["test"]))
    assert labels_of(data.test).tolist() == [i % 10 for i in range(TEST_ID, TEST_ID + 20)]  # 10 read as 0
    assert labels_of(data.test).min() == 0 and labels_of(data.test).max() == 9


# ---------------------------------------------------------------- missing files


@pytest.mark.parametrize(
    "name, write, expected",
    [
        ("cifar100", None, "CIFAR-100 not found: {root}/cifar-100-python lacks train, test"),
        ("mnist", None, "MNIST not found: {root}/MNIST/raw lacks train-images-idx3-ubyte, "),
        ("fashion_mnist", "t10k", "FashionMNIST not found: {root} lacks t10k-labels-idx1-ubyte (each plain or .gz)"),
        ("svhn", "train", "SVHN not found: {root} lacks test_32x32.mat (the cropped-digits .mat files)"),
    ],
)
def test_missing_files_are_one_line_errors_naming_them(tmp_path, name, write, expected):
    if write == "t10k":  # the files directly under root, one missing
        write_idx(tmp_path)
        (tmp_path / "t10k-labels-idx1-ubyte").unlink()
    elif write == "train":
        write_svhn(tmp_path)
        (tmp_path / "test_32x32.mat").unlink()
    with pytest.raises(UserError) as err:
        build(name, tmp_path)
    message = str(err.value)
    assert message.startswith(expected.format(root=tmp_path)) and "\n" not in message


def test_cli_missing_svhn_folder_exits_2_with_one_line(tmp_path, capsys):
    from helpers import in_process

    code = in_process("train", "data=svhn", f"data.root={tmp_path / 'nowhere'}", f"hydra.run.dir={tmp_path / 'run'}")
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert any("SVHN not found" in line and "train_32x32.mat, test_32x32.mat" in line for line in err)
