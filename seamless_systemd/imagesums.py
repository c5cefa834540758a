"""The images' checksums: in pieces, in parallel, and the pre-dump rounds' taken before the shutdown.

Every image file is checked before the restore, so that a flipped bit in the
RAM that carried it makes the unit start afresh instead of running with
damaged memory. The checksums are made in the shutdown, after the final dump,
and checked in the new boot before the restore: both inside the downtime,
and both growing with the state. Three things keep them short
(docs/benchmarks.md has the figures):

- A file's checksum is a list, one per PIECE bytes, so that one file's
  pieces are made and checked on every CPU at once (zlib and hashlib let go
  of the GIL on large buffers, and so do reads).
- The pre-dump rounds (predump) are written at arm time, while the services
  run; their checksums are made then too (note_rounds), with where each piece
  had data. The final dump's --auto-dedup then only punches holes in them:
  in the shutdown a round's piece is hashed again only if it has less data
  than it had (sums, with KNOWN); the rest is taken as noted.
- The check in the new boot hashes every piece, the noted ones included, so
  a piece taken as noted that did change is still caught.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import mmap
import os
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

from seamless_systemd.config import CHECKSUMS

PIECE = 4 << 20


def _piece_sum(fd: int, offset: int, length: int, algorithm: str) -> str:
    """ALGORITHM of LENGTH bytes of FD from OFFSET (fewer where the file ends), as hex.

    The bytes are hashed where they lie, through a read-only mapping, not
    copied out with read(): on the images' DAX file system that is the
    memory itself. Under TCG the copy cost more than the crc32 did (128 MiB
    on one CPU: 0.51 s read and hashed, 0.23 s mapped; docs/benchmarks.md).
    """
    crc, h = 0, None if algorithm == "crc32" else hashlib.new(algorithm)
    length = max(0, min(length, os.fstat(fd).st_size - offset))
    if length:
        flags = mmap.MAP_SHARED | getattr(mmap, "MAP_POPULATE", 0)
        with (
            mmap.mmap(fd, length, flags=flags, prot=mmap.PROT_READ, offset=offset) as m,
            memoryview(m) as view,
        ):
            for pos in range(0, length, 1 << 20):
                with view[pos : pos + (1 << 20)] as chunk:
                    if h is None:
                        crc = zlib.crc32(chunk, crc)
                    else:
                        h.update(chunk)
    return f"{crc:08x}" if h is None else h.hexdigest()


def data_bytes(fd: int, size: int, piece: int = PIECE) -> list[int]:
    """Per piece of the file FD (SIZE bytes): how many of its bytes hold data, not holes."""
    out = [0] * ((size + piece - 1) // piece)
    pos = 0
    while pos < size:
        try:
            start = os.lseek(fd, pos, os.SEEK_DATA)
        except OSError:  # ENXIO: nothing but a hole from POS on
            break
        end = os.lseek(fd, start, os.SEEK_HOLE)
        p = start
        while p < end:
            i = p // piece
            upto = min(end, (i + 1) * piece)
            out[i] += upto - p
            p = upto
        pos = end
    return out


def _files(images: Path) -> list[Path]:
    return [p for p in sorted(images.rglob("*")) if p.is_file() and not p.is_symlink()]


def is_pages(rel: str) -> bool:
    """Whether the image file REL holds memory pages (CRIU's pages-N.img): nearly all the bytes."""
    name = rel.rsplit("/", 1)[-1]
    return name.startswith("pages-") and name.endswith(".img")


def sums(
    images: Path,
    algorithm: str = "crc32",
    known: dict[str, Any] | None = None,
    layout: bool = False,
    select: Callable[[str], bool] | None = None,
    workers: int | None = None,
) -> dict[str, Any]:
    """{"algorithm", "piece", "files": relative path -> [checksum of each piece]} of the files below IMAGES.

    KNOWN: what note_rounds said of some of the files (same algorithm and
    piece); a piece of such a file whose data did not shrink is not read
    again. LAYOUT: also give each file's data bytes per piece ("data").
    SELECT: only the files (relative paths) it says yes to. WORKERS: threads
    (default: one per CPU).
    """
    fds: dict[str, int] = {}
    jobs: dict[tuple[str, int], concurrent.futures.Future[str]] = {}
    reused: dict[tuple[str, int], str] = {}
    counts: dict[str, int] = {}
    data: dict[str, list[int]] = {}  # per piece, then the file's allocated bytes last
    usable = (
        known
        if known
        and known.get("algorithm") == algorithm
        and known.get("piece") == PIECE
        and isinstance(known.get("files"), dict)
        and isinstance(known.get("data"), dict)
        else None
    )
    try:
        with concurrent.futures.ThreadPoolExecutor(max_workers=workers or os.cpu_count() or 1) as pool:
            for path in _files(images):
                rel = str(path.relative_to(images))
                if select is not None and not select(rel):
                    continue
                fd = fds[rel] = os.open(path, os.O_RDONLY)
                size = os.fstat(fd).st_size
                n = counts[rel] = (size + PIECE - 1) // PIECE
                now = None
                if layout or (usable and rel in usable["files"]):
                    now = [*data_bytes(fd, size), os.fstat(fd).st_blocks * 512]
                if layout and now is not None:
                    data[rel] = now
                was_sums = usable["files"].get(rel) if usable else None
                was_data = usable["data"].get(rel) if usable else None
                trusted = (
                    now is not None
                    and isinstance(was_sums, list)
                    and isinstance(was_data, list)
                    and len(was_sums) == n
                    and len(was_data) == n + 1
                    # Room freed that no piece shows (a file system whose SEEK_HOLE sees no holes):
                    # the layout cannot tell which pieces changed, so every piece is read.
                    and not (now[n] < was_data[n] and sum(now[:n]) == sum(was_data[:n]))
                )
                for i in range(n):
                    if (
                        trusted
                        and now is not None
                        and was_sums is not None
                        and was_data is not None
                        and now[i] == was_data[i]
                    ):
                        reused[(rel, i)] = was_sums[i]
                    else:
                        jobs[(rel, i)] = pool.submit(_piece_sum, fd, i * PIECE, PIECE, algorithm)
            files = {
                rel: [reused[(rel, i)] if (rel, i) in reused else jobs[(rel, i)].result() for i in range(n)]
                for rel, n in counts.items()
            }
    finally:
        for fd in fds.values():
            os.close(fd)
    out: dict[str, Any] = {"algorithm": algorithm, "piece": PIECE, "files": files}
    if layout:
        out["data"] = data
    out["hashed_bytes"] = sum(min(PIECE, os.stat(images / rel).st_size - i * PIECE) for rel, i in jobs)
    return out


def note_rounds(images: Path, rounds: list[str], algorithm: str) -> dict[str, Any]:
    """The checksums and data layout of the pre-dump ROUNDS (directories below IMAGES), named from IMAGES."""
    noted: dict[str, Any] = {"algorithm": algorithm, "piece": PIECE, "files": {}, "data": {}}
    for name in rounds:
        got = sums(images / name, algorithm, layout=True)
        noted["files"].update({f"{name}/{rel}": v for rel, v in got["files"].items()})
        noted["data"].update({f"{name}/{rel}": v for rel, v in got["data"].items()})
    return noted


ALL, METADATA, PAGES = "all", "metadata", "pages"


def mismatches(images: Path, expected: Any, part: str = ALL) -> list[str] | None:
    """The files whose checksums differ from EXPECTED (checksums.json); None if it is unreadable.

    PART: ALL; METADATA, every file but the memory pages, and whether the
    files there are the files expected (a page file gone or added counts);
    PAGES, the memory pages' contents only (restore checks them while CRIU
    restores, see restore.PagesCheck). Older forms are read too: one checksum
    per file (the whole file) with its algorithm, and before that a plain
    path -> sha256 mapping.
    """
    if isinstance(expected, dict) and {"algorithm", "files"} <= set(expected):
        algorithm, want = expected["algorithm"], expected["files"]
    else:
        algorithm, want = "sha256", expected
    if algorithm not in CHECKSUMS or not isinstance(want, dict):
        return None
    select = {ALL: None, METADATA: lambda rel: not is_pages(rel), PAGES: is_pages}[part]
    # The pages are checked while CRIU restores them, on every CPU all the same:
    # CRIU waits for the verdict before the tree runs, and at 1 GiB on two CPUs
    # the check on one thread (9 to 11 s) outlasted the restore it waited for
    # (docs/benchmarks-1gib-checks.md).
    if isinstance(expected, dict) and expected.get("piece") == PIECE:
        actual: dict[str, Any] = sums(images, algorithm, select=select)["files"]
    else:
        actual = {
            rel: whole_file(images / rel, algorithm)
            for rel in (str(p.relative_to(images)) for p in _files(images))
            if select is None or select(rel)
        }
    if part == PAGES:
        return sorted(k for k in actual if actual[k] != want.get(k))
    bad = {
        k for k in set(actual) | set(want) if (select is None or select(k)) and actual.get(k) != want.get(k)
    }
    if part == METADATA:  # the page files only by name here
        bad |= {str(p.relative_to(images)) for p in _files(images)} ^ set(want)
    return sorted(bad)


def whole_file(path: Path, algorithm: str) -> str:
    """ALGORITHM of PATH's bytes as one checksum, as hex (the form before the pieces)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        return _piece_sum(fd, 0, os.fstat(fd).st_size, algorithm)
    finally:
        os.close(fd)
