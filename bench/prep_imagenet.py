"""prep-imagenet against the classic recipe, on the same synthetic ILSVRC-shaped archives.

Builds ``--classes`` class tars of ``--per-class`` small JPEGs inside a train tar, plus a val
tar of ``--val-per-class`` real validation file names per class (their real labels, so the
shipped mapping labels them), then times, on ``--cores`` cores:

* classic: ``tar -xf`` the train tar, then per class tar: ``mkdir``, ``tar -xf``, ``rm``;
  untar val and run a shell script of one ``mv`` per validation image (on copies of the
  archives, made untimed, since the recipe consumes them);
* nas-cli: ``prepare()`` (workers = cores) reading the original archives in place.

Prints both times, the ratio, and each one's peak extra disk (sampled with statvfs) with the
part of it that is temporary (beyond the finished tree).

    python bench/prep_imagenet.py [--classes 100] [--per-class 200] [--val-per-class 50] [--cores 2]
"""

from __future__ import annotations

import argparse
import io
import os
import shutil
import subprocess
import tarfile
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

import numpy as np
from PIL import Image
from rich.console import Console
from rich.table import Table

from nas_cli.tools.imagenet import labels
from nas_cli.tools.imagenet.prepare import TRAIN_TAR, VAL_TAR, Options, prepare

CLASSIC = r"""set -e
mkdir -p train && tar -xf ILSVRC2012_img_train.tar -C train && rm -f ILSVRC2012_img_train.tar
cd train
find . -name "*.tar" | while read NAME ; do
  mkdir -p "${NAME%.tar}"; tar -xf "${NAME}" -C "${NAME%.tar}"; rm -f "${NAME}"
done
cd ..
mkdir -p val && tar -xf ILSVRC2012_img_val.tar -C val && rm -f ILSVRC2012_img_val.tar
cd val && bash ../valprep.sh
"""


def images(n: int, size: int) -> list[bytes]:
    """``n`` distinct small JPEGs (smooth gradients plus noise: ~ImageNet-like compression)."""
    rng = np.random.default_rng(0)
    out = []
    yy, xx = np.mgrid[0:size, 0:size]
    for _ in range(n):
        base = np.stack([(yy * rng.uniform(1, 4) + xx * rng.uniform(1, 4)) % 256 for _ in range(3)], -1)
        pixels = np.clip(base + rng.normal(0, 20, base.shape), 0, 255).astype(np.uint8)
        buf = io.BytesIO()
        Image.fromarray(pixels).save(buf, format="JPEG", quality=90)
        out.append(buf.getvalue())
    return out


def add(tf: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = len(data), 1_700_000_000, 0o644
    tf.addfile(info, io.BytesIO(data))


def build(src: Path, classes: int, per_class: int, val_per_class: int, size: int) -> tuple[list[str], dict]:
    mapping = labels.shipped()
    wnids = sorted(set(mapping.values()))[:classes]
    keep = set(wnids)
    val, taken = {}, Counter()
    for name in sorted(mapping):
        if mapping[name] in keep and taken[mapping[name]] < val_per_class:
            val[name] = mapping[name]
            taken[mapping[name]] += 1
    pool = images(64, size)
    with tarfile.open(src / TRAIN_TAR, "w") as outer:
        for k, wnid in enumerate(wnids):
            inner = io.BytesIO()
            with tarfile.open(fileobj=inner, mode="w") as tf:
                for i in range(per_class):
                    add(tf, f"{wnid}_{i + 1}.JPEG", pool[(k * 7 + i) % len(pool)])
            add(outer, f"{wnid}.tar", inner.getvalue())
    with tarfile.open(src / VAL_TAR, "w") as tf:
        for i, name in enumerate(sorted(val)):
            add(tf, name, pool[i % len(pool)])
    return wnids, val


class PeakDisk:
    """The largest rise of the file system's used bytes while running (statvfs every 20 ms)."""

    def __init__(self, path: Path):
        self.path, self.peak, self._stop = path, 0, threading.Event()

    def _used(self) -> int:
        return shutil.disk_usage(self.path).used

    def __enter__(self):
        self.base = self._used()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()
        return self

    def _watch(self) -> None:
        while not self._stop.wait(0.02):
            self.peak = max(self.peak, self._used() - self.base)

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._used() - self.base)


def tree_bytes(root: Path) -> int:
    return sum(os.stat(os.path.join(d, f)).st_blocks * 512 for d, _, fs in os.walk(root) for f in fs)


def count(root: Path) -> int:
    return sum(len(fs) for _, _, fs in os.walk(root))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--classes", type=int, default=100)
    ap.add_argument("--per-class", type=int, default=200)
    ap.add_argument("--val-per-class", type=int, default=50)
    ap.add_argument("--size", type=int, default=96, help="image side in pixels")
    ap.add_argument("--cores", type=int, default=2)
    ap.add_argument("--dir", default=None, help="where to build (default: a temporary folder)")
    args = ap.parse_args()
    if hasattr(os, "sched_setaffinity") and len(os.sched_getaffinity(0)) > args.cores:
        os.sched_setaffinity(0, sorted(os.sched_getaffinity(0))[: args.cores])  # children inherit it
    console = Console()
    root = Path(tempfile.mkdtemp(prefix="bench_prep_imagenet_", dir=args.dir))
    try:
        src = root / "src"
        src.mkdir()
        t = time.perf_counter()
        wnids, val = build(src, args.classes, args.per_class, args.val_per_class, args.size)
        archives = sum(p.stat().st_size for p in src.iterdir())
        console.print(
            f"built {args.classes} classes x {args.per_class} + {len(val)} val images "
            f"({archives / 1e6:,.0f} MB of archives) in {time.perf_counter() - t:.1f} s; "
            f"{len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else os.cpu_count()} cores"
        )

        classic = root / "classic"
        classic.mkdir()
        t = time.perf_counter()
        for name in (TRAIN_TAR, VAL_TAR):
            shutil.copyfile(src / name, classic / name)
        script = [f"mkdir -p {w}" for w in wnids] + [f"mv {n} {w}/" for n, w in sorted(val.items())]
        (classic / "valprep.sh").write_text("\n".join(script) + "\n")
        copy_s = time.perf_counter() - t
        subprocess.run(["sync"], check=False)
        with PeakDisk(root) as disk_classic:
            t = time.perf_counter()
            subprocess.run(["bash", "-c", CLASSIC], cwd=classic, check=True)
            classic_s = time.perf_counter() - t
        # the archive copies the recipe consumed were on disk before it started: count them as temporary
        classic_peak = disk_classic.peak + archives
        classic_tree = tree_bytes(classic / "train") + tree_bytes(classic / "val")
        classic_files = count(classic / "train") + count(classic / "val")
        shutil.rmtree(classic)

        ours = root / "nas_cli"
        subprocess.run(["sync"], check=False)
        with PeakDisk(root) as disk_ours:
            t = time.perf_counter()
            out = prepare(Options(src=src, dst=ours, workers=args.cores, progress=False))
            ours_s = time.perf_counter() - t
        ours_tree = tree_bytes(ours / "train") + tree_bytes(ours / "val")
        assert out["files_written"] == classic_files, (out["files_written"], classic_files)

        table = Table(title=f"prep-imagenet vs the classic recipe ({classic_files:,} images)")
        for col in ("method", "time (s)", "images/s", "peak extra disk (MB)", "temporary (MB)"):
            table.add_column(col, justify="left" if col == "method" else "right")
        table.add_row(
            "classic: tar, per-class loop, mv script",
            f"{classic_s:.2f}",
            f"{classic_files / classic_s:,.0f}",
            f"{classic_peak / 1e6:,.0f}",
            f"{max(0, classic_peak - classic_tree) / 1e6:,.0f}",
        )
        table.add_row(
            f"nas-cli prep-imagenet (workers={args.cores})",
            f"{ours_s:.2f}",
            f"{classic_files / ours_s:,.0f}",
            f"{disk_ours.peak / 1e6:,.0f}",
            f"{max(0, disk_ours.peak - ours_tree) / 1e6:,.0f}",
        )
        console.print(table)
        console.print(
            f"speed-up: {classic_s / ours_s:.2f}x (goal >= 1.5x); classic also needed an untimed "
            f"{copy_s:.1f} s copy of the {archives / 1e6:,.0f} MB of archives it consumes"
        )
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
