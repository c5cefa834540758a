"""Give a restored tree back the transparent huge pages it had (MADV_COLLAPSE, from outside).

CRIU restores a process's private memory into a scratch area and moves each
mapping to its place with mremap(); a 2 MiB page whose place is aligned
differently from where it was filled is split. A service that ran on huge
pages (a 256 MiB Python state: 254 of its 268 MiB in them before the
upgrade) comes back on 4 KiB pages only, and khugepaged, which scans 16 MiB
every 10 s by default, takes minutes to put them together again. Meanwhile
every access to that memory costs more TLB misses (1.7 x the time to hash a
MiB of it in the TCG guest, docs/benchmarks.md).

process_madvise(MADV_COLLAPSE) (Linux 6.1) collapses a range of another
process into huge pages at once. seamless-warm.service does it, after the
units are restored and answer, at the lowest priority, over each restored
tree's private anonymous mappings: what the kernel would have done anyway,
sooner. It is best-effort: a 2 MiB piece that cannot be collapsed (nothing
of it resident, memory too fragmented, a mapping that forbids huge pages)
is left as it is.
"""

from __future__ import annotations

import ctypes
import os
import re
import time
from collections.abc import Iterable
from typing import Any

from seamless_systemd import procs

HUGE = 2 << 20
MADV_COLLAPSE = 25
SYS_PROCESS_MADVISE = 440  # x86-64
_MAPS_RE = re.compile(r"^([0-9a-f]+)-([0-9a-f]+) (\S{4}) \S+ \S+ (\d+)\s*(.*)$")


def ranges(maps_text: str) -> list[tuple[int, int]]:
    """The 2 MiB-aligned insides (at least one huge page) of the private, writable, anonymous mappings."""
    out = []
    for line in maps_text.splitlines():
        m = _MAPS_RE.match(line)
        if not m:
            continue
        perms, inode, name = m.group(3), int(m.group(4)), m.group(5).strip()
        if perms[1] != "w" or perms[3] != "p" or inode != 0 or name not in ("", "[heap]"):
            continue
        start = -(-int(m.group(1), 16) // HUGE) * HUGE
        end = int(m.group(2), 16) // HUGE * HUGE
        if end - start >= HUGE:
            out.append((start, end))
    return out


def anon_huge_kib(pid: int) -> int | None:
    """AnonHugePages of PID's smaps_rollup, in KiB; None if it is gone."""
    try:
        text = (procs.PROC / str(pid) / "smaps_rollup").read_text()
    except OSError:
        return None
    m = re.search(r"^AnonHugePages:\s+(\d+) kB", text, re.M)
    return int(m.group(1)) if m else 0


class _Iovec(ctypes.Structure):
    _fields_ = [("base", ctypes.c_void_p), ("len", ctypes.c_size_t)]


def collapse(pid: int) -> dict[str, Any]:
    """Collapse PID's private anonymous memory into huge pages; what it asked, what it got, how long."""
    t0 = time.monotonic()
    before = anon_huge_kib(pid)
    try:
        spans = ranges((procs.PROC / str(pid) / "maps").read_text())
        pidfd = os.pidfd_open(pid)
    except OSError as e:
        return {"pid": pid, "error": e.strerror or str(e)}
    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    errors: dict[str, int] = {}
    failed: list[list[Any]] = []
    done = 0
    try:
        # One huge page a call. Linux 6.1 gives up on a whole range at the first
        # 2 MiB with no page table (SCAN_PMD_NONE: nothing of it was resident,
        # so the restore made no table there), with EINVAL: the trace event
        # huge_memory:mm_khugepaged_scan_pmd showed 'status=pmd_none' ending
        # each refused range (2026-12-06). Later kernels go on past it.
        for start, end in spans:
            for at in range(start, end, HUGE):
                vec = (_Iovec * 1)(_Iovec(at, HUGE))
                got = libc.syscall(SYS_PROCESS_MADVISE, pidfd, vec, 1, MADV_COLLAPSE, 0)
                if got < 0:
                    name = os.strerror(ctypes.get_errno())
                    errors[name] = errors.get(name, 0) + 1
                    if len(failed) < 10:
                        failed.append([hex(at), 2, name])
                else:
                    done += int(got)
    finally:
        os.close(pidfd)
    return {
        "pid": pid,
        "asked_bytes": sum(e - s for s, e in spans),
        "collapsed_bytes": done,
        "huge_kib_before": before,
        "huge_kib_after": anon_huge_kib(pid),
        "errors": errors,
        "failed_ranges": failed,  # [start, MiB, error] of the first ten huge pages refused
        "seconds": round(time.monotonic() - t0, 3),
    }


def collapse_trees(main_pids: dict[str, int]) -> dict[str, Any]:
    """collapse() over every process of each unit's tree, by unit."""
    out: dict[str, Any] = {}
    for unit, main_pid in main_pids.items():
        out[unit] = [collapse(p) for p in _tree(main_pid)]
    return out


def _tree(main_pid: int) -> Iterable[int]:
    return procs.tree(main_pid) if main_pid > 0 else []
