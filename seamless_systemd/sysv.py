"""System V shared memory segments of a tree in the host's IPC namespace.

A service without PrivateIPC= shares the host's IPC namespace, and the System V
segments it maps (PostgreSQL keeps one beside its shared memory) belong to
that namespace, not to the tree: stock CRIU refuses to dump them. The CRIU the
project carries has --ext-sysv-shm (packaging/criu/0001-ext-sysv-shm.patch):
at the dump it writes the segments' contents into the images; the segments
themselves are ours to carry. So the checkpoint records each mapped segment's
id, key, size, owners and mode (``segments``), and before the restore, in the
new boot, each is made again with the same id (kernel/shm_next_id, the
kernel's knob for checkpoint/restore), by its creator's uid, with the same
key and mode (``recreate``); CRIU then fills and attaches it. A segment the
tree had already marked for removal (IPC_RMID while attached) is marked
again once the restored tree holds it (``finish``). See docs/design.md.
"""

from __future__ import annotations

import ctypes
import os
import re
import struct
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from seamless_systemd.errors import RestoreError

PROC = Path("/proc")
SHM_NEXT_ID = Path("/proc/sys/kernel/shm_next_id")

IPC_CREAT = 0o1000
IPC_EXCL = 0o2000
IPC_RMID = 0
IPC_SET = 1
SHM_LOCK = 11
SHM_DEST = 0o1000  # in /proc/sysvipc/shm's perms: removed, kept while attached
SHM_LOCKED = 0o2000

_SYSV_NAME = re.compile(r"/SYSV([0-9a-f]{8})")


def _libc() -> ctypes.CDLL:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.shmget.argtypes = [ctypes.c_int, ctypes.c_size_t, ctypes.c_int]
    libc.shmctl.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_void_p]
    return libc


def table(path: Path = PROC / "sysvipc/shm") -> dict[int, dict[str, Any]]:
    """The IPC namespace's segments, by id, as /proc/sysvipc/shm lists them."""
    lines = path.read_text().splitlines()
    names = lines[0].split()
    out = {}
    for line in lines[1:]:
        row = dict(zip(names, line.split(), strict=True))
        perms = int(row["perms"], 8)
        shmid = int(row["shmid"])
        out[shmid] = {
            "id": shmid,
            "key": int(row["key"]),
            "size": int(row["size"]),
            "mode": perms & 0o777,
            "removed": bool(perms & SHM_DEST),
            "locked": bool(perms & SHM_LOCKED),
            "uid": int(row["uid"]),
            "gid": int(row["gid"]),
            "cuid": int(row["cuid"]),
            "cgid": int(row["cgid"]),
            "nattch": int(row["nattch"]),
        }
    return out


def mapped(pids: Iterable[int]) -> dict[int, int]:
    """Segment id -> the largest page size of its mappings by PIDS (the inode of /SYSV… is the id)."""
    out: dict[int, int] = {}
    for pid in pids:
        try:
            # smaps (for the page size) costs far more than maps: only for a process that has one.
            if "/SYSV" not in (PROC / str(pid) / "maps").read_text():
                continue
            smaps = (PROC / str(pid) / "smaps").read_text()
        except OSError:
            continue
        current = None
        for line in smaps.splitlines():
            fields = line.split()
            if not fields:
                continue
            if "-" in fields[0] and len(fields) >= 5:
                current = None
                if len(fields) >= 6 and _SYSV_NAME.match(fields[5]):
                    current = int(fields[4])
                    out.setdefault(current, 0)
            elif current is not None and fields[0] == "KernelPageSize:":
                out[current] = max(out[current], int(fields[1]) * 1024)
    return out


def clashes(pids: Iterable[int]) -> list[str]:
    """Segments whose id is also the inode number of another shared memory mapping of PIDS.

    System V segments and anonymous shared memory (and memfds) are files of
    the kernel's one internal tmpfs; a segment's inode number is its id, the
    others' are small numbers the same tmpfs hands out. CRIU files all of them
    under the inode number alone (criu/shmem.c, add_shmem_area), so a segment
    and a mapping with the same number become one object: the dump fails
    ("Can't open 0/map_files/…", seen with PostgreSQL) or, worse, one is
    restored with the other's memory. A restart gives the service other numbers.
    """
    segs: dict[tuple[str, int], str] = {}
    other: dict[tuple[str, int], str] = {}
    for pid in pids:
        try:
            lines = (PROC / str(pid) / "maps").read_text().splitlines()
        except OSError:
            continue
        for line in lines:
            f = line.split(maxsplit=5)
            if len(f) < 6 or not f[4].isdigit() or int(f[4]) == 0:
                continue
            key = (f[3], int(f[4]))
            if _SYSV_NAME.match(f[5]):
                segs[key] = f[5]
            elif f[1].endswith("s"):
                other.setdefault(key, f[5])
    return [
        f"maps System V segment {ino} and a shared memory mapping ({other[(dev, ino)]}) whose inode "
        f"number is the same, {ino}: CRIU keeps shared memory by that number alone and would take one "
        "for the other (criu/shmem.c, add_shmem_area); restart the service before the upgrade, which "
        "gives its shared memory other numbers"
        for dev, ino in sorted(segs)
        if (dev, ino) in other
    ]


def segments(pids: Iterable[int]) -> tuple[list[dict[str, Any]], list[str]]:
    """What the checkpoint must record of the segments PIDS map, and what cannot be carried."""
    maps = mapped(pids)
    if not maps:
        return [], []
    known = table()
    found, problems = [], []
    for shmid, page in sorted(maps.items()):
        seg = known.get(shmid)
        if seg is None:
            problems.append(f"maps System V segment {shmid}, which /proc/sysvipc/shm does not list")
        elif page > os.sysconf("SC_PAGE_SIZE"):
            problems.append(
                f"maps System V segment {shmid} on huge pages (SHM_HUGETLB), which is not carried yet"
            )
        else:
            found.append({k: v for k, v in seg.items() if k != "nattch"})
    return found, problems


def _shmctl_set(libc: ctypes.CDLL, shmid: int, uid: int, gid: int, mode: int) -> None:
    # struct shmid_ds starts with struct ipc_perm: key, uid, gid, cuid, cgid,
    # mode (the same offsets on x86-64 and arm64); IPC_SET reads uid, gid and mode.
    buf = ctypes.create_string_buffer(256)
    struct.pack_into("=iIIIII", buf, 0, 0, uid, gid, 0, 0, mode)
    if libc.shmctl(shmid, IPC_SET, buf) < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"shmctl(IPC_SET) of System V segment {shmid}: {os.strerror(err)}")


def _create_as(seg: dict[str, Any], key: int) -> int:
    """shmget() in a child with the creator's uid and gid, so that cuid/cgid are the same again."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - runs in the child
        try:
            os.close(read)
            os.setgroups([])
            os.setresgid(seg["cgid"], seg["cgid"], seg["cgid"])
            os.setresuid(seg["cuid"], seg["cuid"], seg["cuid"])
            got = _libc().shmget(key, seg["size"], IPC_CREAT | IPC_EXCL | seg["mode"])
            os.write(write, f"{got} {ctypes.get_errno()}".encode())
        finally:
            os._exit(0)
    os.close(write)
    with os.fdopen(read) as f:
        answer = f.read().split()
    os.waitpid(pid, 0)
    if len(answer) != 2:
        raise RestoreError(f"could not recreate System V segment {seg['id']} (its helper died)")
    got, err = int(answer[0]), int(answer[1])
    if got < 0:
        raise RestoreError(f"could not recreate System V segment {seg['id']}: {os.strerror(err)}")
    return got


def recreate(segs: list[dict[str, Any]]) -> list[int]:
    """Make SEGS again with their ids, before the restore; return the ids made.

    Fails before anything is made if an id or a key is taken in this boot. A
    segment made and then refused is removed again.
    """
    if not segs:
        return []
    now = table()
    keys = {s["key"] for s in now.values() if s["key"] != 0}
    for seg in segs:
        if seg["id"] in now:
            raise RestoreError(f"System V segment id {seg['id']} is already taken in this boot")
        key = 0 if seg["removed"] else seg["key"]
        if key != 0 and key in keys:
            raise RestoreError(f"System V segment key {key:#x} is already taken in this boot")
    libc = _libc()
    made: list[int] = []
    try:
        for seg in segs:
            SHM_NEXT_ID.write_text(f"{seg['id']}\n")
            got = _create_as(seg, 0 if seg["removed"] else seg["key"])
            made.append(got)
            if got != seg["id"]:
                raise RestoreError(f"System V segment {seg['id']} came back as {got}")
            if (seg["uid"], seg["gid"]) != (seg["cuid"], seg["cgid"]):
                _shmctl_set(libc, got, seg["uid"], seg["gid"], seg["mode"])
            if seg["locked"] and libc.shmctl(got, SHM_LOCK, None) < 0:
                raise RestoreError(f"could not lock System V segment {got} in memory (SHM_LOCK)")
    except BaseException:
        remove(made)
        raise
    return made


def remove(ids: Iterable[int]) -> None:
    """Remove segments we made (the restore failed); a segment still attached goes at its last detach."""
    libc = _libc()
    for shmid in ids:
        libc.shmctl(shmid, IPC_RMID, None)


def finish(segs: list[dict[str, Any]]) -> None:
    """After the restore: mark again for removal what the tree had marked (it holds them now)."""
    remove(s["id"] for s in segs if s["removed"])
