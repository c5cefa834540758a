"""What an initramfs image holds: its file names, read without unpacking it.

`plan` and `arm` look into the target kernel's initramfs (does it carry our
hook, which modules does it have). Debian's lsinitramfs walks the image with a
shell loop and cpio: 4 to 7 s for a 13 MiB image in the test bed's emulated
guest, the larger part of a `plan`. The format is simple (the kernel's
Documentation/driver-api/early-userspace/buffer-format.rst): one or more cpio
archives in the "newc" format, each possibly compressed, one after the other,
with zero padding between them. This module reads the names from the headers
and skips the file bodies; the compressed part goes through Python's own
gzip, xz and bzip2 readers or the zstd/lz4/lzop command. An image it cannot
read gives None, and the caller asks lsinitramfs (or dracut's lsinitrd).
"""

from __future__ import annotations

import bz2
import contextlib
import gzip
import lzma
import shutil
import subprocess
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Protocol

from seamless_systemd.errors import CommandError
from seamless_systemd.run import run

_NEWC = (b"070701", b"070702")
_HEADER = 110
_TRAILER = "TRAILER!!!"
_NAME_MAX = 4096  # PATH_MAX: a longer name means a damaged header, not a file
# Magic numbers of the compressors initramfs-tools and dracut use, and the command
# that decompresses to stdout when Python has no reader of its own.
_ZSTD = b"\x28\xb5\x2f\xfd"
_LZ4 = b"\x02\x21\x4c\x18"
_LZO = b"\x89\x4c\x5a\x4f"
_GZIP = b"\x1f\x8b"
_XZ = b"\xfd7zXZ\x00"
_BZIP2 = b"BZh"
_LZMA = b"\x5d\x00\x00"
_COMMANDS = {_ZSTD: ("zstd", "-dcq"), _LZ4: ("lz4", "-dcq"), _LZO: ("lzop", "-dcq")}


class _Readable(Protocol):
    def read(self, n: int = -1, /) -> bytes: ...

    def close(self) -> None: ...


class Unreadable(Exception):
    """The image is not what this reader knows; ask lsinitramfs."""


def _read_exact(f: _Readable, n: int) -> bytes:
    data = f.read(n)
    if len(data) != n:
        raise Unreadable("truncated")
    return data


def _skip(f: _Readable, n: int) -> None:
    while n > 0:
        chunk = f.read(min(n, 1 << 20))
        if not chunk:
            raise Unreadable("truncated")
        n -= len(chunk)


def _archive(f: _Readable, first: bytes, names: list[str]) -> int:
    """Read one newc archive whose first 6 bytes were FIRST; the bytes it took."""
    taken = 0
    magic = first
    while True:
        if magic not in _NEWC:
            raise Unreadable(f"no cpio header at +{taken}")
        header = magic + _read_exact(f, _HEADER - 6)
        try:
            namesize = int(header[94:102], 16)
            filesize = int(header[54:62], 16)
        except ValueError as e:
            raise Unreadable("bad cpio header") from e
        if not 1 <= namesize <= _NAME_MAX:
            raise Unreadable(f"a cpio name of {namesize} bytes")
        name = _read_exact(f, namesize)[:-1].decode("utf-8", "surrogateescape")
        name_pad = -(_HEADER + namesize) % 4
        _skip(f, name_pad + filesize + (-filesize % 4))
        taken += _HEADER + namesize + name_pad + filesize + (-filesize % 4)
        if name == _TRAILER:
            return taken
        names.append(name)
        magic = f.read(6)


def _compressed(head: bytes) -> bool:
    return _python_reader(head) is not None or head.startswith(tuple(_COMMANDS))


def _python_reader(head: bytes) -> Callable[[IO[bytes]], _Readable] | None:
    """Python's own reader for the compressor whose magic starts HEAD; None: a command's."""
    if head.startswith(_GZIP):
        return lambda raw: gzip.GzipFile(fileobj=raw)
    if head.startswith((_XZ, _LZMA)):
        return lzma.LZMAFile
    if head.startswith(_BZIP2):
        return bz2.BZ2File
    return None


@contextlib.contextmanager
def _decompressed(path: Path, offset: int, head: bytes) -> Iterator[_Readable]:
    """The decompressed stream of PATH from OFFSET on (the rest of the image)."""
    opener = _python_reader(head)
    with open(path, "rb") as raw:
        raw.seek(offset)
        if opener is not None:
            f = opener(raw)
            try:
                yield f
            finally:
                f.close()
            return
        argv = next(cmd for magic, cmd in _COMMANDS.items() if head.startswith(magic))
        if shutil.which(argv[0]) is None:
            raise Unreadable(f"{argv[0]} is not installed")
        with subprocess.Popen(argv, stdin=raw, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL) as p:
            assert p.stdout is not None
            try:
                yield p.stdout
            finally:
                p.stdout.close()
                p.kill()


def names(path: Path) -> list[str]:
    """The names of the files PATH holds, in image order; Unreadable if this reader can't tell."""
    out: list[str] = []
    offset = 0
    with open(path, "rb") as f:
        while True:
            f.seek(offset)
            head = f.read(6)
            if not head:
                return out
            if head[0] == 0:
                # Padding between archives: go on at the next non-zero byte.
                f.seek(offset)
                block = f.read(1 << 16)
                rest = block.lstrip(b"\0")
                offset += len(block) - len(rest)
                continue
            if head in _NEWC:
                offset += _archive(f, head, out)
                continue
            if _compressed(head):
                with _decompressed(path, offset, head) as stream:
                    first = stream.read(6)
                    _archive(stream, first, out)
                # A compressed part is the image's last: initramfs-tools and dracut write
                # uncompressed early archives (microcode) first, then one compressed one.
                return out
            raise Unreadable(f"unknown data at +{offset}")


def listing(path: Path) -> list[str] | None:
    """The paths the initramfs PATH holds; None if that cannot be told."""
    try:
        return names(path)
    except (Unreadable, OSError, EOFError, ValueError, lzma.LZMAError, zlib.error):
        return _lister_listing(path)


def _lister_listing(path: Path) -> list[str] | None:
    lister = shutil.which("lsinitramfs") or shutil.which("lsinitrd")
    if lister is None:
        return None
    try:
        return run([lister, str(path)], timeout=120).stdout.split()
    except CommandError:
        return None
