"""Reading the ILSVRC tar archives safely, by member offsets, without extracting anything first.

The train archive holds one tar per class (``n01440764.tar``...). Its headers are read
once (a seek per member); each class tar is then read in place through ``Slice``, a
bounded window onto the outer file, so nothing is ever written besides the images.
Every member is checked the way ``tarfile``'s ``'data'`` filter would (absolute paths,
``..``, links, devices are refused) and every archive must end with its end-of-archive
block: a truncated or corrupt archive is an error that names the member, never a silent
short read.
"""

from __future__ import annotations

import io
import os
import posixpath
from collections.abc import Iterator
from dataclasses import dataclass

from nas_cli.errors import UserError

BLOCK = 512


class ArchiveError(UserError):
    """A refused or damaged archive member (a one-line user error naming it)."""


class Slice(io.RawIOBase):
    """A read-only, seekable window ``[start, start + size)`` onto an open binary file."""

    def __init__(self, f, start: int, size: int, name: str = ""):
        self._f, self._start, self._size, self._pos = f, start, size, 0
        self.name = name

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, pos: int, whence: int = 0) -> int:
        base = {0: 0, 1: self._pos, 2: self._size}[whence]
        self._pos = max(0, base + pos)
        return self._pos

    def read(self, n: int = -1) -> bytes:
        left = self._size - self._pos
        n = left if n is None or n < 0 else min(n, left)
        if n <= 0:
            return b""
        self._f.seek(self._start + self._pos)
        data = self._f.read(n)
        self._pos += len(data)
        return data

    def readinto(self, b) -> int:
        data = self.read(len(b))
        b[: len(data)] = data
        return len(data)


@dataclass(frozen=True)
class Member:
    """A regular file in an archive: its name and where its bytes lie."""

    name: str
    offset: int  # of the data, from the start of the archive (or window)
    size: int


_REGULAR = (b"0", b"\0", b"7")
_KINDS = {
    b"1": "a hard link",
    b"2": "a symbolic link",
    b"3": "a character device",
    b"4": "a block device",
    b"6": "a fifo",
    b"S": "a sparse file",
}
ZERO_BLOCK = bytes(BLOCK)


def safe_name(archive: str, name: str, kind: bytes, linkname: str = "") -> str | None:
    """The member's relative path, ``None`` for a directory; refuses anything unsafe."""
    where = f"{archive}: member {name!r}"
    if kind in (b"1", b"2"):
        raise ArchiveError(f"{where} is a link (to {linkname!r}): refused")
    if kind in _KINDS:
        raise ArchiveError(f"{where} is {_KINDS[kind]}: refused")
    if name.startswith(("/", "\\")) or (len(name) > 1 and name[1] == ":") or "\x00" in name:
        raise ArchiveError(f"{where} has an absolute path: refused")
    parts = [p for p in name.replace("\\", "/").split("/") if p not in ("", ".")]
    if ".." in parts:
        raise ArchiveError(f"{where} has '..' in its path: refused")
    if kind == b"5":
        return None
    if kind not in _REGULAR:
        raise ArchiveError(f"{where} is not a regular file (type {kind!r}): refused")
    if not parts:
        raise ArchiveError(f"{where} has an empty name: refused")
    return posixpath.join(*parts)


def _text(field: bytes) -> str:
    return field.split(b"\0", 1)[0].decode("utf-8", "surrogateescape")


def _number(field: bytes) -> int:
    if field[0] & 0x80:  # GNU base-256 (sizes of 8 GiB and more)
        return int.from_bytes(field[1:], "big")
    digits = field.split(b"\0", 1)[0].strip()
    return int(digits, 8) if digits else 0


def _pax(data: bytes) -> dict[str, str]:
    records, i = {}, 0
    while i < len(data):
        space = data.index(b" ", i)
        length = int(data[i:space])
        key, _, value = data[space + 1 : i + length - 1].partition(b"=")
        records[key.decode()] = value.decode("utf-8", "surrogateescape")
        i += length
    return records


def members(fileobj, archive: str) -> Iterator[Member]:
    """Every regular file of a seekable tar, in order, checked as it is reached.

    Reads each 512-byte header (checksum verified; ustar, GNU long names and pax paths
    understood) and seeks past the data, so reading a member's bytes right after it is
    yielded reads the archive front to back. Raises ``ArchiveError`` naming the member for
    unsafe members, truncation, a corrupt header or a missing end-of-archive block.
    """
    size = fileobj.seek(0, 2)
    pos, last = 0, "its first member"
    long_name: str | None = None
    pax: dict[str, str] = {}
    while True:
        fileobj.seek(pos)
        block = fileobj.read(BLOCK)
        if len(block) < BLOCK:
            if pos == 0:
                raise ArchiveError(f"{archive}: not a tar archive (empty or too short)")
            raise ArchiveError(f"{archive}: ends without its end-of-archive block after {last} (truncated?)")
        if block == ZERO_BLOCK:
            return
        try:
            stored = _number(block[148:156])
            unsigned = sum(block) - sum(block[148:156]) + 256
            if stored != unsigned and stored != unsigned - 2 * sum(b for b in block[148:156] if b > 127):
                raise ValueError("bad checksum")
            name, kind, length = _text(block[0:100]), block[156:157], _number(block[124:136])
        except ValueError as ex:
            what = "not a tar archive" if pos == 0 else f"corrupt header after {last}"
            raise ArchiveError(f"{archive}: {what} (at byte {pos:,}: {ex})") from None
        if block[257:263] == b"ustar\x00" and block[345]:  # POSIX ustar: a path prefix
            name = _text(block[345:500]) + "/" + name
        data = pos + BLOCK
        pos = data + -(-length // BLOCK) * BLOCK
        if kind in (b"L", b"K", b"x", b"g"):  # GNU long name/link, pax extended headers
            fileobj.seek(data)
            payload = fileobj.read(length)
            if len(payload) != length:
                raise ArchiveError(f"{archive}: truncated extended header after {last}")
            if kind == b"L":
                long_name = _text(payload)
            elif kind == b"x":
                pax = _pax(payload)
            continue
        if long_name is not None:
            name, long_name = long_name, None
        if pax:
            name = pax.get("path", name)
            length = int(pax.get("size", length))
            pos = data + -(-length // BLOCK) * BLOCK
            pax = {}
        relative = safe_name(archive, name, kind, _text(block[157:257]))
        if data + length > size:
            raise ArchiveError(
                f"{archive}: member {name!r} is truncated ({max(0, size - data):,} of {length:,} bytes present)"
            )
        last = f"member {name!r}"
        if relative is not None:
            yield Member(relative, data, length)


def scan(fileobj, archive: str) -> list[Member]:
    """All of ``members``: the whole archive checked before anything is written."""
    return list(members(fileobj, archive))


def read_exact(fileobj, member: Member, archive: str) -> bytes:
    fileobj.seek(member.offset)
    data = fileobj.read(member.size)
    if len(data) != member.size:
        raise ArchiveError(f"{archive}: member {member.name!r} is truncated")
    return data


def open_raw(path: str | os.PathLike):
    """The archive file for random reads (a large buffer: members are read front to back)."""
    return open(path, "rb", buffering=1 << 20)
