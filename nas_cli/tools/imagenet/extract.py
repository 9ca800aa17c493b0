"""The work each worker process does: one class tar, or one chunk of validation images.

Kept free of heavy imports (no pandas, no torch): worker processes import only this.
A class is written into ``train/.<wnid>.partial/`` and renamed to ``train/<wnid>/`` when
complete; on any failure the partial folder is removed and the error names the member.
"""

from __future__ import annotations

import errno
import os
import posixpath
import shutil
from collections.abc import Iterable
from pathlib import Path

from nas_cli.errors import UserError
from nas_cli.tools.imagenet.archives import ArchiveError, Member, Slice, open_raw, read_exact, scan
from nas_cli.tools.imagenet.archives import members as iter_members
from nas_cli.tools.imagenet.images import kind, to_rgb_jpeg


def partial_dir(root: Path, wnid: str) -> Path:
    return root / f".{wnid}.partial"


def _fixed(data: bytes, where: str, name: str, fixed: list[dict]) -> bytes:
    found = kind(data)
    if found == "jpeg":
        return data
    try:
        new = to_rgb_jpeg(data)
    except Exception as ex:
        raise UserError(f"{where}: {name!r} is {found} and cannot be decoded to rewrite it ({ex})") from None
    fixed.append({"file": name, "was": found})
    return new


def _write(path: Path, data: bytes) -> None:
    with open(path, "wb") as out:
        out.write(data)


def _disk_full(where: str) -> UserError:
    return UserError(f"disk full while writing {where}: free some space and re-run (finished classes are kept)")


def extract_class(
    train_tar: str, offset: int, size: int, wnid: str, root: str, per_class: int | None, fix_images: bool
) -> dict:
    """Write class ``wnid`` (the tar at ``offset`` in the train archive) to ``root/<wnid>/``."""
    root_path = Path(root)
    partial, final = partial_dir(root_path, wnid), root_path / wnid
    archive = f"{Path(train_tar).name}: {wnid}.tar"
    shutil.rmtree(partial, ignore_errors=True)
    files = written = 0
    fixed: list[dict] = []
    try:
        partial.mkdir(parents=True)
        with open_raw(train_tar) as f:
            window = Slice(f, offset, size, name=archive)
            members: Iterable[Member]
            if per_class is None:  # one pass, front to back: each image right after its header
                members = iter_members(window, archive)
            else:  # the first per_class by name: all headers first
                members = sorted(scan(window, archive), key=lambda m: m.name)[:per_class]
            for m in members:
                data = read_exact(window, m, archive)
                if fix_images:
                    data = _fixed(data, archive, m.name, fixed)
                target = partial / m.name
                if "/" in m.name:
                    target.parent.mkdir(parents=True, exist_ok=True)
                _write(target, data)
                files += 1
                written += len(data)
        if final.exists():  # a folder no finished record vouches for: redo it
            shutil.rmtree(final)
        os.rename(partial, final)
    except OSError as ex:
        shutil.rmtree(partial, ignore_errors=True)
        if ex.errno == errno.ENOSPC:
            raise _disk_full(str(final)) from None
        raise
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    return {"wnid": wnid, "files": files, "bytes": written, "fixed": [{"split": "train", **x} for x in fixed]}


def extract_val_chunk(val_tar: str, jobs: list[tuple[str, int, int, str]], root: str, fix_images: bool) -> dict:
    """Write validation images ``(name, offset, size, wnid)`` to ``root/<wnid>/<name>``."""
    archive = Path(val_tar).name
    root_path = Path(root)
    files = written = 0
    fixed: list[dict] = []
    made: set[str] = set()
    try:
        with open_raw(val_tar) as f:
            for name, offset, size, wnid in jobs:
                data = read_exact(f, Member(name, offset, size), archive)
                if fix_images:
                    data = _fixed(data, archive, name, fixed)
                if wnid not in made:
                    (root_path / wnid).mkdir(parents=True, exist_ok=True)
                    made.add(wnid)
                _write(root_path / wnid / posixpath.basename(name), data)
                files += 1
                written += len(data)
    except OSError as ex:
        if ex.errno == errno.ENOSPC:
            raise _disk_full(str(root_path)) from None
        raise
    return {"files": files, "bytes": written, "fixed": [{"split": "val", **x} for x in fixed]}


def check_folder(folder: str, split: str) -> list[dict]:
    """Rewrite the non-JPEG files of an already extracted folder in place (atomically each)."""
    fixed: list[dict] = []
    for entry in sorted(os.scandir(folder), key=lambda e: e.name):
        if not entry.is_file() or entry.name.startswith("."):
            continue
        with open(entry.path, "rb") as fh:
            data = fh.read()
        new = _fixed(data, folder, entry.name, fixed)
        if new is not data:
            tmp = Path(folder) / f".{entry.name}.tmp"
            _write(tmp, new)
            os.replace(tmp, entry.path)
    return [{"split": split, **x} for x in fixed]


__all__ = ["ArchiveError", "check_folder", "extract_class", "extract_val_chunk"]
