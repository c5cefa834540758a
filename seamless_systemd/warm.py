"""Warm before it is needed: the page cache the trees had, the paths their images name.

A kexec starts the new kernel with an empty page cache and an empty dentry
cache. Two things follow (docs/design.md, "Warm caches"):

- the preserved service comes back fast, then reads from disk everything it
  had in memory through files (a database's pages, its libraries): its first
  answers are slow. Before the freeze, ``record`` notes which pages of which
  files the tree had resident (mincore over every file it has open or mapped,
  and the paths the configuration names); after the kexec ``rewarm`` reads
  those pages back from seamless-warm.service, once the restores are over, at
  low priority and one chunk at a time: the service's own read waits behind one
  chunk at most (readahead or POSIX_FADV_WILLNEED would queue them all). A file
  several units use is read once, and only its pages not resident yet;
- CRIU opens every file its images name, one after the other: ``resolve``
  looks them all up in parallel threads first, while the images are checked.

A file is read back only if it is still the same file (inode, size,
modification time): a file replaced or changed meanwhile is skipped.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import ctypes
import dataclasses
import mmap
import os
import stat
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from seamless_systemd import procs, state
from seamless_systemd.log import log

PAGE = mmap.PAGESIZE
# mincore looks at a file through a window of this size at a time.
WINDOW = 256 << 20
# A file's resident pages as at most this many ranges (nearby ones are merged).
MAX_RANGES = 4096
# A directory named in the configuration: at most this many files below it.
MAX_DIR_FILES = 20000
# The re-warm reads this much at a time.
CHUNK = 1 << 20
# Where no page cache worth keeping lives (memory file systems, kernel files).
_SKIP_PREFIXES = ("/proc/", "/sys/", "/dev/", "/run/", "/memfd:")

PROT_READ = 1
MAP_SHARED = 1


@dataclasses.dataclass(frozen=True)
class FileRef:
    """A file a tree uses: the path the new boot finds it at, and how to open it now."""

    # As /proc shows it: from this root, in the tree's mount namespace (a file
    # it sees elsewhere than the host does fails the identity check later).
    path: str
    opener: str  # a path that reaches the same file now (/proc/PID/fd/N for an open file)


def _worth(path: str) -> bool:
    return path.startswith("/") and not path.endswith(" (deleted)") and not path.startswith(_SKIP_PREFIXES)


def files_of(pids: Iterable[int]) -> list[FileRef]:
    """The regular files PIDS have open or mapped, and their executables and working directories."""
    refs: dict[str, FileRef] = {}
    for pid in pids:
        base = procs.PROC / str(pid)
        found: list[tuple[str, str]] = []
        for name in ("exe", "cwd"):
            with contextlib.suppress(OSError):
                found.append((os.readlink(base / name), str(base / name)))
        try:
            fds = list((base / "fd").iterdir())
        except OSError:
            fds = []
        for fd in fds:
            with contextlib.suppress(OSError):
                found.append((os.readlink(fd), str(fd)))
        try:
            maps = (base / "maps").read_text()
        except OSError:
            maps = ""
        for line in maps.splitlines():
            fields = line.split(maxsplit=5)
            if len(fields) == 6 and fields[5].startswith("/"):
                found.append((fields[5], str(base / "map_files" / fields[0])))
        for path, opener in found:
            if _worth(path) and path not in refs:
                refs[path] = FileRef(path, opener)
    return list(refs.values())


def files_below(paths: Iterable[str]) -> list[FileRef]:
    """The files the configuration names: each path, or the files below a directory."""
    out: list[FileRef] = []
    for top in paths:
        if os.path.isfile(top):
            out.append(FileRef(top, top))
            continue
        for dirpath, _, names in os.walk(top):
            for name in names:
                p = os.path.join(dirpath, name)
                out.append(FileRef(p, p))
                if len(out) >= MAX_DIR_FILES:
                    log.warning("Page cache: only the first %d files below %s are kept warm", len(out), top)
                    return out
    return out


def _libc() -> Any:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mmap.restype = ctypes.c_void_p
    libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int]
    libc.mmap.argtypes += [ctypes.c_long]
    libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
    libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p]
    return libc


_RESIDENT = bytes(1 if i & 1 else 0 for i in range(256))


def _windows(fd: int, size: int, libc: Any) -> Iterable[tuple[int, bytes]]:
    """mincore over the file open as FD: (first page, one byte per page, 1 = resident) per window."""
    for offset in range(0, size, WINDOW):
        length = min(WINDOW, size - offset)
        addr = libc.mmap(None, length, PROT_READ, MAP_SHARED, fd, offset)
        if addr in (None, ctypes.c_void_p(-1).value):
            raise OSError(ctypes.get_errno(), os.strerror(ctypes.get_errno()))
        try:
            vec = (ctypes.c_ubyte * ((length + PAGE - 1) // PAGE))()
            if libc.mincore(addr, length, vec) != 0:
                raise OSError(ctypes.get_errno(), os.strerror(ctypes.get_errno()))
        finally:
            libc.munmap(addr, length)
        yield offset // PAGE, bytes(vec).translate(_RESIDENT)


def _runs(bits: bytes | bytearray, first: int = 0) -> Iterable[tuple[int, int]]:
    """The runs of 1 in BITS (one byte per page) as (first page, count)."""
    i = bits.find(1)
    while i >= 0:
        end = bits.find(0, i)
        end = len(bits) if end < 0 else end
        yield first + i, end - i
        i = bits.find(1, end)


def resident(fd: int, size: int, libc: Any = None) -> list[list[int]]:
    """The resident pages of the file open as FD, as [first page, count] ranges."""
    ranges: list[list[int]] = []
    for first, bits in _windows(fd, size, libc or _libc()):
        for start, count in _runs(bits, first):
            if ranges and ranges[-1][0] + ranges[-1][1] == start:
                ranges[-1][1] += count
            else:
                ranges.append([start, count])
    return coarsen(ranges, MAX_RANGES)


def coarsen(ranges: list[list[int]], limit: int) -> list[list[int]]:
    """RANGES as at most LIMIT ranges: the ones closest together merged (a few pages more are read)."""
    gap = 1
    while len(ranges) > limit:
        gap *= 2
        merged: list[list[int]] = []
        for start, count in ranges:
            if merged and start - (merged[-1][0] + merged[-1][1]) < gap:
                merged[-1][1] = start + count - merged[-1][0]
            else:
                merged.append([start, count])
        ranges = merged
    return ranges


def _identity(st: os.stat_result) -> dict[str, int]:
    return {"ino": st.st_ino, "size": st.st_size, "mtime_ns": st.st_mtime_ns}


def record(refs: Iterable[FileRef], dest: Path) -> dict[str, Any]:
    """Note which pages of REFS are resident, in DEST; a summary for the dump record."""
    t0 = time.monotonic()
    libc = _libc()
    files: list[dict[str, Any]] = []
    seen: set[tuple[int, int]] = set()
    for ref in refs:
        try:
            fd = os.open(ref.opener, os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            continue
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode) or st.st_size == 0 or (st.st_dev, st.st_ino) in seen:
                continue
            seen.add((st.st_dev, st.st_ino))
            ranges = resident(fd, st.st_size, libc)
        except OSError:
            continue
        finally:
            os.close(fd)
        if ranges:
            files.append({"path": ref.path, **_identity(st), "ranges": ranges})
    pages = sum(c for f in files for _, c in f["ranges"])
    state.write_json(dest, {"page_size": PAGE, "files": files})
    summary = {"files": len(files), "bytes": pages * PAGE, "seconds": round(time.monotonic() - t0, 3)}
    log.info("Page cache: %d MiB resident in %d file(s) noted", summary["bytes"] >> 20, len(files))
    return summary


def _wanted(lists: Iterable[dict[str, Any]], skipped: list[str]) -> dict[tuple[Any, ...], list[list[int]]]:
    """The files LISTS name, each once (units share libraries), with the byte ranges asked of it."""
    files: dict[tuple[Any, ...], list[list[int]]] = {}
    for entry in lists:
        try:
            page = int(entry.get("page_size", PAGE))
            listed = list(entry.get("files", []))
        except (AttributeError, TypeError, ValueError) as e:
            skipped.append(f"{entry!r:.60}: {e}")
            continue
        for f in listed:
            try:
                key = (str(f["path"]), int(f["ino"]), int(f["size"]), int(f["mtime_ns"]))
                got = [[int(start) * page, int(count) * page] for start, count in f["ranges"]]
            except (KeyError, TypeError, ValueError) as e:
                skipped.append(f"{f.get('path') if isinstance(f, dict) else f!r:.60}: {e}")
                continue
            files.setdefault(key, []).extend(got)
    return files


def rewarm(lists: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """Read back the pages LISTS name (record's files), for the files that are still the same.

    A file several units listed is read once; pages already in the page cache
    (the restores read the same libraries) are not read again.
    """
    t0 = time.monotonic()
    asked = warmed = already = 0
    skipped: list[str] = []
    libc = _libc()
    for (path, ino, size, mtime_ns), ranges in _wanted(lists, skipped).items():
        want = bytearray((size + PAGE - 1) // PAGE)
        for offset, length in ranges:
            first, end = max(0, offset // PAGE), min(len(want), -(-(offset + length) // PAGE))
            if end > first:
                want[first:end] = b"\1" * (end - first)
        pages = want.count(1)
        asked += pages * PAGE
        try:
            got, cached = _read_back(path, {"ino": ino, "size": size, "mtime_ns": mtime_ns}, want, libc)
            warmed += got
            already += cached
        except (OSError, ValueError) as e:
            why = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
            skipped.append(f"{path}: {why}")
    return {
        "asked_bytes": asked,
        "read_bytes": warmed,
        "already_cached_bytes": already,
        "skipped": skipped[:20],
        "skipped_files": len(skipped),
        "seconds": round(time.monotonic() - t0, 3),
    }


def _read_back(path: str, identity: dict[str, int], want: bytearray, libc: Any) -> tuple[int, int]:
    """Read the pages WANT marks that are not resident; (bytes read, bytes found resident)."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOATIME)
    buf = bytearray(CHUNK)
    read = 0
    try:
        if _identity(os.fstat(fd)) != identity:
            raise ValueError("changed since the checkpoint")
        asked = want.count(1)
        for first, bits in _windows(fd, identity["size"], libc):
            n = len(bits)
            # Pages asked for and not resident: one byte per page, so bitwise per byte.
            missing = int.from_bytes(want[first : first + n], "little") & ~int.from_bytes(bits, "little")
            want[first : first + n] = missing.to_bytes(n, "little")
        cached = (asked - want.count(1)) * PAGE
        for start, count in _runs(want):
            offset, end = start * PAGE, min((start + count) * PAGE, identity["size"])
            while offset < end:
                view = memoryview(buf)[: min(CHUNK, end - offset)]
                got = os.preadv(fd, [view], offset)
                if got <= 0:
                    return read, cached  # shorter than it was: identity said otherwise
                offset += got
                read += got
    finally:
        os.close(fd)
    return read, cached


def resolve(paths: Iterable[str], workers: int = 8) -> dict[str, Any]:
    """Look up PATHS in parallel (their dentries and inodes come in); how many and how long."""
    t0 = time.monotonic()
    todo = sorted(set(paths))

    def look(p: str) -> bool:
        try:
            os.stat(p)
            return True
        except OSError:
            return False

    with concurrent.futures.ThreadPoolExecutor(max_workers=workers) as pool:
        found = sum(pool.map(look, todo))
    return {"paths": len(todo), "found": found, "seconds": round(time.monotonic() - t0, 3)}
