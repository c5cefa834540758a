"""Processes: trees, cgroups, open files, memory."""

from __future__ import annotations

import dataclasses
import os
import re
import stat
from pathlib import Path

PROC = Path("/proc")
CGROUP_ROOT = Path("/sys/fs/cgroup")


def _stat_fields(pid: int) -> list[str]:
    """The fields of /proc/PID/stat after the command name (state, ppid, pgrp, session, …)."""
    stat = (PROC / str(pid) / "stat").read_text()
    # comm may hold spaces and parentheses: the fields start after the last ')'.
    return stat.rsplit(")", 1)[1].split()


def parent_of(pid: int) -> int:
    return int(_stat_fields(pid)[1])


def session_of(pid: int) -> int:
    return int(_stat_fields(pid)[3])


def status_field(pid: int, key: str) -> str:
    """A field of /proc/PID/status ('' if absent or the process is gone)."""
    try:
        for line in (PROC / str(pid) / "status").read_text().splitlines():
            name, _, value = line.partition(":")
            if name == key:
                return value.strip()
    except OSError:
        pass
    return ""


def namespace(pid: int | str, kind: str) -> str:
    """The namespace identity ('mnt:[4026531841]') of PID ('self' for us)."""
    try:
        return os.readlink(PROC / str(pid) / "ns" / kind)
    except OSError:
        return ""


@dataclasses.dataclass(frozen=True)
class Mount:
    mount_id: int
    dev: str  # major:minor of the source file system
    root: str  # the part of the source file system mounted here
    point: str
    options: frozenset[str]  # per-mount options (ro, nosuid, relatime, …)
    fstype: str
    tags: frozenset[str] = frozenset()  # propagation: shared:N, master:N, …


def mounts(pid: int | str) -> list[Mount]:
    """PID's mount table ('self' for ours), from /proc/PID/mountinfo, in mount order."""
    out = []
    for line in (PROC / str(pid) / "mountinfo").read_text().splitlines():
        left, _, right = line.partition(" - ")
        f = left.split()
        fstype = right.split()[0] if right else ""
        out.append(
            Mount(
                int(f[0]),
                f[2],
                _unescape(f[3]),
                _unescape(f[4]),
                frozenset(f[5].split(",")),
                fstype,
                frozenset(f[6:]),
            )
        )
    return out


def unmount_below(path: Path) -> list[str]:
    """Detach every mount at or below PATH in our mount namespace, deepest first; the points detached.

    A criu killed midway leaves the mounts it makes in its working directory
    (the images directory), e.g. its cgroup yard (.criu.cgyard.*): they would
    keep the images' files from being removed, and the file system from
    being unmounted.
    """
    import ctypes

    top = str(path).rstrip("/")
    points = [m.point for m in mounts("self") if m.point == top or m.point.startswith(top + "/")]
    libc = ctypes.CDLL(None, use_errno=True)
    done = []
    for point in sorted(set(points), key=lambda p: p.count("/"), reverse=True):
        if libc.umount2(point.encode(), 2) == 0:  # MNT_DETACH
            done.append(point)
    return done


def _unescape(s: str) -> str:
    return s.replace("\\040", " ").replace("\\011", "\t").replace("\\012", "\n").replace("\\134", "\\")


def all_pids() -> list[int]:
    return [int(p.name) for p in PROC.iterdir() if p.name.isdigit()]


def tree(root: int) -> list[int]:
    """ROOT and all its descendants (processes, not threads)."""
    children: dict[int, list[int]] = {}
    for pid in all_pids():
        try:
            children.setdefault(parent_of(pid), []).append(pid)
        except (OSError, IndexError, ValueError):
            continue  # gone meanwhile
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(children.get(pid, []))
    return sorted(out)


def cgroup_pids(control_group: str) -> list[int]:
    """All processes in CONTROL_GROUP and below it."""
    base = CGROUP_ROOT / control_group.lstrip("/")
    pids: set[int] = set()
    for procs in base.rglob("cgroup.procs"):
        try:
            pids.update(int(x) for x in procs.read_text().split())
        except OSError:
            continue
    return sorted(pids)


def cgroup_of(pid: int) -> str | None:
    """PID's cgroup v2 path ('0::' line of /proc/PID/cgroup); None if gone or not told."""
    try:
        for line in (PROC / str(pid) / "cgroup").read_text().splitlines():
            if line.startswith("0::"):
                return line[3:]
    except OSError:
        pass
    return None


def comm(pid: int) -> str:
    try:
        return (PROC / str(pid) / "comm").read_text().strip()
    except OSError:
        return "?"


def threads(pid: int) -> list[int]:
    return sorted(int(t.name) for t in (PROC / str(pid) / "task").iterdir())


def fds(pid: int) -> dict[int, str]:
    """fd number -> readlink target for PID."""
    out: dict[int, str] = {}
    base = PROC / str(pid) / "fd"
    try:
        entries = list(base.iterdir())
    except OSError:
        return out  # gone, or not ours to read
    for entry in entries:
        try:
            out[int(entry.name)] = os.readlink(entry)
        except OSError:
            continue
    return out


def device_number(pid: int, fd: int) -> tuple[int, int] | None:
    """(major, minor) if PID's FD is a character or block device, else None."""
    try:
        st = os.stat(PROC / str(pid) / "fd" / str(fd))
    except OSError:
        return None
    if stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode):
        return (os.major(st.st_rdev), os.minor(st.st_rdev))
    return None


_SOCKET_RE = re.compile(r"^socket:\[(\d+)\]$")


def socket_inode(target: str) -> int | None:
    m = _SOCKET_RE.match(target)
    return int(m.group(1)) if m else None


# What CRIU writes of a process's memory: its anonymous pages (a private file
# page it wrote to is one of them), those swapped out, and its share of the
# shared memory it maps (CRIU writes a shared page once for the tree; the
# proportional shares of the processes that map it add up to it).
# Anonymous + Private_Dirty, as before, counted most pages twice: in the VM's
# run of Debian's services the plan said 604 MiB and the images took 259 MiB.
DUMPED_MEMORY = ("Anonymous", "Swap", "Pss_Shmem")


def anon_bytes(pid: int) -> int:
    """An estimate of the memory CRIU writes for PID (DUMPED_MEMORY of its smaps_rollup)."""
    try:
        text = (PROC / str(pid) / "smaps_rollup").read_text()
    except OSError:
        return 0
    total = 0
    for line in text.splitlines():
        key, _, rest = line.partition(":")
        if key in DUMPED_MEMORY:
            total += int(rest.split()[0]) * 1024
    return total


def longest_mapping(pid: int) -> tuple[int, str]:
    """PID's longest private (or anonymous shared) mapping: (bytes, what is mapped, '' for anonymous).

    These are the mappings whose page map CRIU reads in one buffer (criu/mem.c).
    """
    best = (0, "")
    try:
        maps = (PROC / str(pid) / "maps").read_text()
    except OSError:
        return best
    for line in maps.splitlines():
        f = line.split(maxsplit=5)
        if len(f) < 5:
            continue
        path = f[5].strip() if len(f) == 6 else ""
        if f[1][3] != "p" and path not in ("", "/dev/zero (deleted)"):
            continue
        if path == "[vsyscall]":
            continue
        lo, _, hi = f[0].partition("-")
        size = int(hi, 16) - int(lo, 16)
        if size > best[0]:
            best = (size, path)
    return best


def meminfo(key: str) -> int:
    """A /proc/meminfo value in bytes (0 if absent)."""
    for line in (PROC / "meminfo").read_text().splitlines():
        name, _, rest = line.partition(":")
        if name == key:
            return int(rest.split()[0]) * 1024
    return 0


def mntns_root(pid: int) -> Path:
    """The root of PID's mount namespace as we can reach it (PID itself may be chrooted)."""
    ns = namespace(pid, "mnt")
    if ns == namespace("self", "mnt"):
        return Path("/")
    for q in [pid, *all_pids()]:
        try:
            if namespace(q, "mnt") == ns and os.readlink(PROC / str(q) / "root") == "/":
                return PROC / str(q) / "root"
        except OSError:
            continue
    return PROC / str(pid) / "root"
