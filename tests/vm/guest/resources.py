#!/usr/bin/python3
"""A test service holding the kernel objects a real service has, besides memory.

    resources.py PORT DIR [--sysv]

Answers one line of JSON per TCP connection on 127.0.0.1:PORT describing each
object as it sees it now; 'INC' first adds one to its counter. DIR (its
StateDirectory) holds its files; DIR/watched is watched with inotify. SIGUSR1
is read through a signalfd. The objects:
  plain      a file on disk, open at an offset
  deleted    a file on disk, deleted but still open
  memfd      a memfd with data
  shm_posix  a POSIX shared memory segment (/dev/shm), mapped, fd closed
  run_file   a file in its RuntimeDirectory (tmpfs), open
  shm_sysv   with --sysv: System V shared memory segments: one with a key
             (0600), one IPC_PRIVATE (0640) marked for removal while
             attached, as /proc/sysvipc/shm lists them
  locks      flock() on DIR/flock.lock, a POSIX lock on DIR/posix.lock
  udp        a bound UDP socket
  eventfd, timerfd (1 s period), itimer (ITIMER_REAL, 0.5 s), signalfd, inotify
and its credentials (uids, gids, groups, capabilities).
"""

import ctypes
import fcntl
import hashlib
import mmap
import os
import signal
import socket
import struct
import sys
import time

from lines import answer_forever, listen_tcp

libc = ctypes.CDLL(None, use_errno=True)
libc.shmat.restype = ctypes.c_void_p
libc.shmat.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_int]
NONBLOCK = os.O_NONBLOCK
KIB = 1024


def ok(ret):
    if ret == -1:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return ret


def sha(data):
    return hashlib.sha256(data).hexdigest()


port, base = int(sys.argv[1]), sys.argv[2]
with_sysv = "--sysv" in sys.argv[3:]
os.makedirs(f"{base}/watched", exist_ok=True)
blob = os.urandom(1 << 20)
state = {"counter": 0, "started_at": time.time(), "main_pid": os.getpid(), "alarms": 0, "usr1": 0}
state["blob_sha256"] = sha(blob)
state["inotify_names"] = []
state["timer_ticks"] = 0

# A file on disk, open at an offset.
with open(f"{base}/plain.txt", "w") as f:
    f.write("".join(f"line {i}\n" for i in range(1000)))
plain = os.open(f"{base}/plain.txt", os.O_RDONLY)
os.lseek(plain, 1234, os.SEEK_SET)

# Deleted but open.
deleted = os.open(f"{base}/deleted.bin", os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
os.write(deleted, os.urandom(64 * KIB))
os.unlink(f"{base}/deleted.bin")

memfd = os.memfd_create("seamless-test")
os.write(memfd, os.urandom(256 * KIB))

# POSIX shared memory: only the mapping stays.
shm_fd = os.open(f"/dev/shm/seamless-test-shm-{port}", os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
os.ftruncate(shm_fd, 64 * KIB)
shm_posix = mmap.mmap(shm_fd, 64 * KIB, mmap.MAP_SHARED)
os.close(shm_fd)
shm_posix[:] = os.urandom(64 * KIB)

# A file in the RuntimeDirectory (tmpfs), kept open.
run_dir = os.environ.get("RUNTIME_DIRECTORY", "/run/seamless-test-resources")
run_file = os.open(f"{run_dir}/open.txt", os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o640)
os.write(run_file, b"written in the first boot\n")

# System V shared memory: a keyed segment (IPC_CREAT | 0600), and a private
# one (0640) removed at once (IPC_RMID), which lives as long as it is attached.
SYSV_KEY = 0x5EA3_0000 + port
SYSV_SIZES = (64 * KIB, 20 * KIB + 100)
shm_segments = []  # (id, address, size)
if with_sysv:
    for key, size, mode in ((SYSV_KEY, SYSV_SIZES[0], 0o600), (0, SYSV_SIZES[1], 0o640)):
        shm_id = ok(libc.shmget(key, ctypes.c_size_t(size), 0o1000 | mode))
        addr = libc.shmat(shm_id, None, 0)
        if addr in (None, ctypes.c_void_p(-1).value):
            raise OSError(ctypes.get_errno(), "shmat")
        ctypes.memmove(addr, os.urandom(size), size)
        shm_segments.append((shm_id, addr, size))
    ok(libc.shmctl(shm_segments[1][0], 0, None))  # IPC_RMID


def sysv_table():
    """Our segments as /proc/sysvipc/shm lists them (key, perms, size, owners)."""
    ours = {str(i) for i, _, _ in shm_segments}
    with open("/proc/sysvipc/shm") as f:
        names = f.readline().split()
        rows = [dict(zip(names, line.split(), strict=True)) for line in f]
    keep = ("key", "shmid", "perms", "size", "uid", "gid", "cuid", "cgid")
    return [{k: r[k] for k in keep} for r in rows if r["shmid"] in ours]


lock1 = os.open(f"{base}/flock.lock", os.O_RDWR | os.O_CREAT, 0o600)
fcntl.flock(lock1, fcntl.LOCK_EX)
lock2 = os.open(f"{base}/posix.lock", os.O_RDWR | os.O_CREAT, 0o600)
fcntl.lockf(lock2, fcntl.LOCK_EX)

# A bound UDP socket (its port must stay the same).
udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
udp.bind(("127.0.0.1", 0))

efd = os.eventfd(42, os.EFD_NONBLOCK)

# timerfd: CLOCK_MONOTONIC, 1 s period.
tfd = ok(libc.timerfd_create(1, NONBLOCK))
spec = struct.pack("llll", 1, 0, 1, 0)
ok(libc.timerfd_settime(tfd, 0, spec, None))


def on_alarm(signum, frame):
    state["alarms"] += 1


signal.signal(signal.SIGALRM, on_alarm)
signal.setitimer(signal.ITIMER_REAL, 0.5, 0.5)

signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR1})
mask = bytearray(128)
mask[(signal.SIGUSR1 - 1) // 8] |= 1 << ((signal.SIGUSR1 - 1) % 8)
sfd = ok(libc.signalfd(-1, bytes(mask), NONBLOCK))

ifd = ok(libc.inotify_init1(NONBLOCK))
ok(libc.inotify_add_watch(ifd, f"{base}/watched".encode(), 0x100))  # IN_CREATE


def drain(fd, size):
    out = b""
    while True:
        try:
            chunk = os.read(fd, size)
        except BlockingIOError:
            return out
        if not chunk:
            return out
        out += chunk


def look():
    """Everything as this process sees it now."""
    state["usr1"] += len(drain(sfd, 128)) // 128
    data = drain(ifd, 4096)
    while data:
        _wd, _mask, _cookie, n = struct.unpack_from("iIII", data)
        state["inotify_names"].append(data[16 : 16 + n].rstrip(b"\0").decode())
        data = data[16 + n :]
    ticks = drain(tfd, 8)
    if ticks:
        state["timer_ticks"] += struct.unpack("Q", ticks)[0]
    cur = ctypes.create_string_buffer(32)
    ok(libc.timerfd_gettime(tfd, cur))
    interval = struct.unpack("llll", cur.raw)[:2]
    value = drain(efd, 8)
    count = struct.unpack("Q", value)[0] if value else 0
    if count:
        os.eventfd_write(efd, count)
    caps = {}
    with open("/proc/self/status") as f:
        for line in f:
            key, _, val = line.partition(":")
            if key in ("CapEff", "CapPrm", "CapBnd", "NoNewPrivs", "Seccomp"):
                caps[key] = val.strip()
    return {
        **state,
        "pid": os.getpid(),
        "kernel": os.uname().release,
        "plain": {"offset": os.lseek(plain, 0, os.SEEK_CUR), "sha": sha(os.pread(plain, 1 << 20, 0))},
        "deleted": {
            "sha": sha(os.pread(deleted, 1 << 20, 0)),
            "link": os.readlink(f"/proc/self/fd/{deleted}"),
        },
        "memfd": sha(os.pread(memfd, 1 << 20, 0)),
        "shm_posix": sha(shm_posix[:]),
        "run_file": os.pread(run_file, 4096, 0).decode(),
        "shm_sysv": [sha(ctypes.string_at(addr, size)) for _, addr, size in shm_segments],
        "shm_sysv_table": sysv_table() if shm_segments else [],
        "eventfd": count,
        "udp": list(udp.getsockname()),
        "timerfd_interval": list(interval),
        "itimer": list(signal.getitimer(signal.ITIMER_REAL)),
        "creds": {
            "uids": list(os.getresuid()),
            "gids": list(os.getresgid()),
            "groups": sorted(os.getgroups()),
            **caps,
        },
        "ipc_ns": os.readlink("/proc/self/ns/ipc"),
    }


def reply(cmd):
    if cmd == "INC":
        state["counter"] += 1
    return look()


srv = listen_tcp("127.0.0.1", port)
print(f"starting fresh: pid {os.getpid()}", flush=True)
answer_forever(srv, reply)
