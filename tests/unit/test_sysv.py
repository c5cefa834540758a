"""System V segments of a tree: what the checkpoint records of them, and how they are made again.

These run on the real kernel, in an IPC namespace of their own (unshare --ipc),
so that the ids they ask for are free and the host's segments are left alone.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from seamless_systemd import sysv

REPO = Path(__file__).resolve().parents[2]

# Runs in a fresh IPC namespace: make segments as a service would, record
# them, remove them as the kexec does, make them again, print what was seen.
SCRIPT = r"""
import ctypes, json, os
from seamless_systemd import sysv
from seamless_systemd.errors import RestoreError

libc = ctypes.CDLL(None, use_errno=True)
libc.shmat.restype = ctypes.c_void_p
libc.shmat.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_int]
libc.shmdt.argtypes = [ctypes.c_void_p]

def make(key, size, mode):
    shmid = libc.shmget(key, ctypes.c_size_t(size), 0o1000 | mode)
    assert shmid >= 0, os.strerror(ctypes.get_errno())
    return shmid

keyed = make(0x5EA30001, 8192, 0o640)
sysv._shmctl_set(sysv._libc(), keyed, 1, 2, 0o640)  # owned by 1:2, made by root
for _ in range(3):  # burn ids: the next one is no longer the first free slot
    libc.shmctl(make(0, 4096, 0o600), sysv.IPC_RMID, None)
# Made by another user, then removed while attached (it lives on while attached).
pid = os.fork()
if pid == 0:
    os.setresgid(65534, 65534, 65534)
    os.setresuid(65534, 65534, 65534)
    print(make(0, 5000, 0o600), flush=True)
    os._exit(0)
os.waitpid(pid, 0)
other = max(sysv.table())
addrs = [libc.shmat(i, None, 0) for i in (keyed, other)]
libc.shmctl(other, sysv.IPC_RMID, None)
unmapped = make(0x5EA30002, 4096, 0o600)  # in the namespace, not mapped by us

recorded, problems = sysv.segments([os.getpid()])
before = sysv.table()
for a in addrs:
    libc.shmdt(ctypes.c_void_p(a))
for i in list(sysv.table()):
    libc.shmctl(i, sysv.IPC_RMID, None)
assert sysv.table() == {}

made = sysv.recreate(recorded)
after = sysv.table()
try:
    sysv.recreate(recorded)
    again = "made twice"
except RestoreError as e:
    again = str(e)
sysv.remove(made)
print(json.dumps({"recorded": recorded, "problems": problems, "before": before, "made": made,
                  "after": after, "again": again, "left": sysv.table(),
                  "next_id": open("/proc/sys/kernel/shm_next_id").read().strip()}))
"""


def in_own_ipc_namespace(script: str) -> dict:
    """What SCRIPT printed last (JSON), run as root in a fresh IPC namespace from the repository."""
    p = subprocess.run(
        ["unshare", "--ipc", sys.executable, "-c", script],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert p.returncode == 0, p.stderr
    return json.loads(p.stdout.splitlines()[-1])


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("unshare") is None, reason="needs root and unshare")
def test_segments_recorded_and_made_again_with_ids_keys_owners() -> None:
    seen = in_own_ipc_namespace(SCRIPT)
    recorded = seen["recorded"]
    assert seen["problems"] == []
    # Both mapped segments, not the one only the namespace holds.
    assert len(recorded) == 2, recorded
    keyed, other = sorted(recorded, key=lambda s: s["key"], reverse=True)
    assert keyed["key"] == 0x5EA30001 and keyed["size"] == 8192 and keyed["mode"] == 0o640
    assert (keyed["uid"], keyed["gid"], keyed["cuid"], keyed["cgid"]) == (1, 2, 0, 0)
    assert not keyed["removed"]
    assert other["removed"] and other["key"] == 0 and other["size"] == 5000
    assert (other["uid"], other["cuid"]) == (65534, 65534)
    # Made again: the same ids, keys, sizes, modes and owners (creators too).
    assert sorted(seen["made"]) == sorted(s["id"] for s in recorded)
    after = {int(k): v for k, v in seen["after"].items()}
    before = {int(k): v for k, v in seen["before"].items()}
    for seg in recorded:
        got, was = after[seg["id"]], before[seg["id"]]
        for field in ("key", "size", "mode", "uid", "gid", "cuid", "cgid"):
            assert got[field] == was[field], (field, got, was)
    assert "already taken in this boot" in seen["again"]
    assert seen["left"] == {} and seen["next_id"] == "-1"


def test_table_parses_the_kernel_listing(tmp_path: Path) -> None:
    listing = tmp_path / "shm"
    listing.write_text(
        "       key      shmid perms                  size  cpid  lpid nattch   uid   gid  cuid  cgid"
        "      atime      dtime      ctime                   rss                  swap\n"
        "   5432001      32769  1600                    56   512   530      6   104   110   104   110"
        " 1764633600 1764633600 1764633600                  4096                     0\n"
    )
    (seg,) = sysv.table(listing).values()
    assert seg["id"] == 32769 and seg["key"] == 5432001 and seg["size"] == 56
    assert seg["mode"] == 0o600 and seg["removed"] and not seg["locked"]
    assert (seg["uid"], seg["gid"], seg["cuid"], seg["cgid"], seg["nattch"]) == (104, 110, 104, 110, 6)


# A segment made with the id the kernel's internal tmpfs gave an anonymous shared
# mapping as its inode number: CRIU would file both under one key.
CLASH = r"""
import ctypes, json, mmap, os
from seamless_systemd import sysv

libc = ctypes.CDLL(None, use_errno=True)
libc.shmat.restype = ctypes.c_void_p
libc.shmat.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_int]
anon = mmap.mmap(-1, 1 << 20, mmap.MAP_SHARED)
anon[0:1] = b"x"
ino = next(int(l.split()[4]) for l in open("/proc/self/maps") if "/dev/zero" in l and "rw-s" in l)
seen = {"before": sysv.clashes([os.getpid()])}
open("/proc/sys/kernel/shm_next_id", "w").write(str(ino))
shmid = libc.shmget(0, 4096, 0o1600)
assert shmid == ino, (shmid, ino)
assert libc.shmat(shmid, None, 0) not in (None, ctypes.c_void_p(-1).value)
seen["after"] = sysv.clashes([os.getpid()])
seen["ino"] = ino
print(json.dumps(seen))
"""


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("unshare") is None, reason="needs root and unshare")
def test_a_segment_whose_id_is_another_mappings_inode_is_named() -> None:
    seen = in_own_ipc_namespace(CLASH)
    assert seen["before"] == []
    (why,) = seen["after"]
    assert f"maps System V segment {seen['ino']} and a shared memory mapping (/dev/zero (deleted))" in why
    assert "restart the service" in why
