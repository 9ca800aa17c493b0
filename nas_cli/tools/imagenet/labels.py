"""Validation labels: file name -> synset (wnid), from the devkit or from the mapping shipped here.

The devkit (``ILSVRC2012_devkit_t12.tar.gz``) holds ``data/meta.mat`` (the ``synsets`` struct
array: ``ILSVRC2012_ID`` 1..1000 are the classes, with their ``WNID``) and
``data/ILSVRC2012_validation_ground_truth.txt`` (one id per line, for
``ILSVRC2012_val_00000001.JPEG`` onwards). ``val_labels.csv.gz`` in this package is the same
public ground truth as ``file,wnid`` rows.
"""

from __future__ import annotations

import csv
import gzip
import io
import re
import tarfile
from importlib import resources
from pathlib import Path

from nas_cli.errors import UserError

WNID = re.compile(r"n[0-9]{8}")  # a WordNet noun id: the class folder's name, so nothing else may pass
SHIPPED = "val_labels.csv.gz"
META = "data/meta.mat"
GROUND_TRUTH = "data/ILSVRC2012_validation_ground_truth.txt"
N_VAL = 50_000


def is_wnid(text: str) -> bool:
    """Whether ``text`` is a WordNet noun id (``n01440764``): the only names a class folder gets."""
    return WNID.fullmatch(text) is not None


def check_wnids(wnids, where: str) -> None:
    """Refuse a table whose ids could name a folder outside ``dst`` (``/abs``, ``../x``): it is data, not paths."""
    bad = next((w for w in wnids if not is_wnid(w)), None)
    if bad is not None:
        raise UserError(f"{where}: WNID {bad!r} is not a WordNet id (n and 8 digits): refused, nothing was written")


def val_name(index: int) -> str:
    """The validation file with 1-based ``index``: ``ILSVRC2012_val_00000001.JPEG``..."""
    return f"ILSVRC2012_val_{index:08d}.JPEG"


def shipped() -> dict[str, str]:
    """The 50,000 ``file -> wnid`` rows shipped with nas-cli."""
    raw = resources.files(__package__).joinpath(SHIPPED).read_bytes()
    rows = csv.reader(io.StringIO(gzip.decompress(raw).decode()))
    header = next(rows)
    if header != ["file", "wnid"]:
        raise UserError(f"the shipped {SHIPPED} is damaged (header {header})")
    table = {file: wnid for file, wnid in rows}
    check_wnids(table.values(), f"the shipped {SHIPPED}")
    return table


def _member_bytes(tf: tarfile.TarFile, info: tarfile.TarInfo) -> bytes:
    fileobj = tf.extractfile(info)
    assert fileobj is not None  # only regular members are read, and those always have a file object
    return fileobj.read()


def from_devkit(path: str | Path) -> dict[str, str]:
    """``file -> wnid`` from the devkit archive (reads ``meta.mat`` with scipy)."""
    try:
        from scipy.io import loadmat
    except ImportError as ex:
        raise UserError(
            f"{path}: reading the devkit's meta.mat needs scipy (pip install scipy), or pass labels=shipped"
        ) from ex
    meta: bytes | None = None
    truth: bytes | None = None
    try:
        with tarfile.open(path, mode="r:*") as tf:
            for info in tf:
                if not info.isreg():
                    continue
                if info.name.endswith(META):
                    meta = _member_bytes(tf, info)
                elif info.name.endswith(GROUND_TRUTH):
                    truth = _member_bytes(tf, info)
    except (tarfile.TarError, OSError, EOFError) as ex:
        raise UserError(f"{path}: cannot read the devkit archive ({ex})") from None
    if meta is None:
        raise UserError(f"{path}: no {META} in the devkit archive")
    if truth is None:
        raise UserError(f"{path}: no {GROUND_TRUTH} in the devkit archive")
    try:
        synsets = loadmat(io.BytesIO(meta), squeeze_me=True)["synsets"]
        ids = [int(x) for x in synsets["ILSVRC2012_ID"].ravel()]
        wnids = [str(x) for x in synsets["WNID"].ravel()]
    except Exception as ex:
        raise UserError(f"{path}: {META} is not the devkit's synsets table ({type(ex).__name__}: {ex})") from None
    check_wnids(wnids, f"{path}: {META}")  # the whole table, before any of it is used
    by_id = dict(zip(ids, wnids))
    labels: dict[str, str] = {}
    for i, line in enumerate(truth.decode(errors="replace").split(), start=1):
        if not line.isdigit() or int(line) not in by_id:
            raise UserError(f"{path}: {GROUND_TRUTH} line {i}: class id {line[:20]!r} is not in {META}")
        labels[val_name(i)] = by_id[int(line)]
    return labels


def load(source: str, devkit: Path) -> tuple[dict[str, str], str]:
    """The labels and where they came from; ``source`` is auto | devkit | shipped (auto: the devkit if present)."""
    if source not in ("auto", "devkit", "shipped"):
        raise UserError(f"labels={source}: expected auto, devkit or shipped")
    if source == "devkit" or (source == "auto" and devkit.is_file()):
        if not devkit.is_file():
            raise UserError(f"labels=devkit but there is no {devkit}")
        return from_devkit(devkit), f"devkit ({devkit.name})"
    return shipped(), f"shipped mapping (nas_cli/tools/imagenet/{SHIPPED})"
