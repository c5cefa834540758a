"""Kernel objects a process holds that CRIU cannot checkpoint, and CRIU's errors in plain words.

A process can hold kernel objects that are neither files nor sockets: they
show in /proc/PID/fd as ``anon_inode:KIND`` and, when mapped, in
/proc/PID/maps under the same name. CRIU 4.1 dumps a fixed set of them
(criu/*.c: ``is_anon_link_type``) and refuses any other, e.g. an io_uring
instance, whose rings are mapped ("Unknown shit 600 (anon_inode:[io_uring])"
in criu/proc_parse.c). ``plan`` finds them first, so the sysadmin reads what
and why, with the service's own fix where there is one, and never CRIU's raw
log as the reason.
"""

from __future__ import annotations

import re
from pathlib import Path

from seamless_systemd import procs

# anon_inode kinds CRIU dumps, and the CRIU version that first did.
DUMPABLE = {
    "[eventfd]": (0,),
    "[eventpoll]": (0,),
    "inotify": (0,),
    "[fanotify]": (0,),
    "[signalfd]": (0,),
    "[timerfd]": (0,),
    "bpf-map": (3, 14),
    "[pidfd]": (4, 0),
}
# CRIU restores the rings of Linux AIO (io_setup), mapped as "/[aio] (deleted)".
ANON = "anon_inode:"

WHAT = {
    "[io_uring]": "io_uring (asynchronous I/O rings)",
    "[userfaultfd]": "userfaultfd",
    "[perf_event]": "perf events",
    "[pidfd]": "pidfds",
    "kvm-vm": "a KVM virtual machine",
    "[fscontext]": "a mount context (fsopen)",
}

# What a service can do instead, by its executable's name (comm).
FIXES = {
    ("huge-mapping", "mariadbd"): (
        "MariaDB reserves address space for its buffer pool up to innodb_buffer_pool_size_max (8 TiB by "
        "default): set it to the buffer pool's size, e.g. 'innodb_buffer_pool_size_max = 128M' in the "
        "[mariadbd] section, and restart it"
    ),
    ("[io_uring]", "mariadbd"): (
        "MariaDB's InnoDB uses io_uring for its I/O; 'innodb_use_native_aio = 0' in the [mariadbd] section "
        "(e.g. /etc/mysql/mariadb.conf.d/60-seamless.cnf) and a restart make it use its own I/O threads"
    ),
    ("[io_uring]", "mysqld"): (
        "InnoDB uses io_uring for its I/O; 'innodb_use_native_aio = 0' and a restart make it use its "
        "own I/O threads"
    ),
}


def _kinds_of(pid: int) -> dict[str, str]:
    """The anon_inode kinds PID holds: kind -> how ('fd N' or 'mapped')."""
    out: dict[str, str] = {}
    for fd, target in sorted(procs.fds(pid).items()):
        if target.startswith(ANON):
            out.setdefault(target[len(ANON) :], f"fd {fd}")
    try:
        maps = (procs.PROC / str(pid) / "maps").read_text()
    except OSError:
        return out
    for line in maps.splitlines():
        fields = line.split(maxsplit=5)
        if len(fields) == 6 and fields[5].startswith(ANON):
            out[fields[5][len(ANON) :].strip()] = "mapped"
    return out


def problems(pids: list[int], criu_version: tuple[int, ...] | None) -> list[str]:
    """What the tree PIDS holds that this CRIU cannot dump, one reason per kind, with its fix."""
    found: dict[str, list[int]] = {}
    mapped: set[str] = set()
    for pid in pids:
        for kind, how in _kinds_of(pid).items():
            since = DUMPABLE.get(kind)
            if how == "mapped" or since is None or (criu_version or (0,)) < since:
                found.setdefault(kind, []).append(pid)
                if how == "mapped":
                    mapped.add(kind)
    out = []
    for kind, who in sorted(found.items()):
        what = WHAT.get(kind, f"a kernel object CRIU cannot checkpoint ({ANON}{kind})")
        comms = sorted({procs.comm(p) for p in who})
        why = "which CRIU cannot checkpoint"
        if kind in DUMPABLE and kind not in mapped:
            have = ".".join(map(str, criu_version or ())) or "unknown"
            why = f"which CRIU keeps from {'.'.join(map(str, DUMPABLE[kind]))} on (this one: {have})"
        reason = f"uses {what} in process {who[0]} ({', '.join(comms)}), {why}"
        fix = next((FIXES[(kind, c)] for c in comms if (kind, c) in FIXES), None)
        out.append(f"{reason}; {fix}" if fix else reason)
    return out


# CRIU's own errors, in words: (pattern in its log, what it means).
EXPLAINED = [
    (r"Unknown shit \d+ \(anon_inode:(\S+)\)", "it maps a kernel object CRIU cannot checkpoint ({0})"),
    (
        r"namespaces doesn't belong to the target user namespace",
        "it runs in its own user namespace (PrivateUsers=), which CRIU cannot dump",
    ),
    (r"External socket is used", "it is connected to a socket outside the unit"),
    (r"Can't dump half of stream unix connection", "it is connected to a unix socket outside the unit"),
    (r"Connected TCP socket", "it has an open TCP connection that CRIU was not told to keep"),
    (r"Can't fork for (\d+): File exists", "PID {0} is taken by another process"),
    (r"has unreachable sharing", "a mount of its sandbox shares events with one CRIU cannot reach"),
    (r"Timeout reached", "CRIU ran out of time"),
    (r"Unsupported (\S+) .*", "it uses something CRIU does not support ({0})"),
]
_PREFIX = re.compile(r"^\(\d+\.\d+\)\s+(?:\d+:\s+)?(?:Error|Warn) \([^)]*\):\s*")


def explain(log: Path) -> str:
    """Why CRIU failed, from its log, in a sentence; the log's path for the rest."""
    try:
        text = log.read_text(errors="replace")
    except OSError:
        return f"it left no log ({log})"
    for pattern, words in EXPLAINED:
        m = re.search(pattern, text)
        if m:
            return words.format(*m.groups()) + f" (CRIU's log: {log})"
    errors = [_PREFIX.sub("", ln).strip() for ln in text.splitlines() if "Error (" in ln]
    first = next((e for e in errors if e), "no error line in its log")
    return f"{first} (CRIU's log: {log})"
