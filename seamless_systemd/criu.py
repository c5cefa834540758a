"""Checkpoint and restore of one unit's process tree with CRIU."""

from __future__ import annotations

import dataclasses
import hashlib
import shutil
import time
from pathlib import Path

from seamless_systemd import procs, sockets
from seamless_systemd.errors import CheckpointError, CommandError, RestoreError
from seamless_systemd.run import run
from seamless_systemd.systemd import UnitInfo

CRIU = "criu"


@dataclasses.dataclass(frozen=True)
class TreeFacts:
    """What must be known about a unit's processes to dump them."""

    main_pid: int
    pids: tuple[int, ...]
    journal_inodes: tuple[int, ...]
    memory_bytes: int
    # A classic double-forking daemon is not the leader of its session (the
    # session leader was the process in between, long gone); CRIU dumps and
    # restores such a tree only as a "shell job".
    shell_job: bool = False
    # What CRIU or this version cannot keep (each names the unit and the reason).
    unsupported: tuple[str, ...] = ()


def inspect(info: UnitInfo) -> TreeFacts:
    """Look at UNIT's processes.

    Raises CheckpointError when there is nothing to dump as one tree; what
    CRIU (or this version) cannot keep is listed in TreeFacts.unsupported.
    """
    if info.active_state != "active" or info.main_pid <= 0:
        raise CheckpointError(f"{info.name} is not running (state {info.active_state}, no main process)")
    pids = procs.tree(info.main_pid)
    outside = [p for p in procs.cgroup_pids(info.control_group) if p not in pids]
    if outside:
        what = ", ".join(f"{p} ({procs.comm(p)})" for p in outside)
        raise CheckpointError(
            f"{info.name} has processes outside its main process's tree: {what}; CRIU dumps one tree"
        )
    unsupported: list[str] = []
    inodes: set[int] = set()
    devices: set[str] = set()
    for pid in pids:
        for target in procs.fds(pid).values():
            ino = procs.socket_inode(target)
            if ino is not None:
                inodes.add(ino)
            elif target.startswith("/dev/") and target not in ALLOWED_DEVICES:
                devices.add(target)
    if devices:
        unsupported.append(f"has devices open that CRIU cannot keep: {', '.join(sorted(devices))}")
    socks = sockets.unix_sockets()
    journal = sockets.journal_streams(inodes, socks)
    for ino in sorted(inodes - journal):
        s = socks.get(ino)
        if s is None or s.type == 2 or not s.peer or s.peer in inodes:
            continue  # not unix, datagram (--ext-unix-sk), unconnected, or inside the tree
        peer = socks.get(s.peer)
        where = peer.name if peer and peer.name else f"socket {s.peer}"
        unsupported.append(f"is connected to a unix socket outside the unit ({where}); CRIU cannot dump that")
        break
    unsupported += _sandbox_problems(info.main_pid)
    for pid in pids:
        tracer = procs.status_field(pid, "TracerPid")
        if tracer not in ("", "0"):
            unsupported.append(f"process {pid} is traced (ptrace) by PID {tracer}")
    mem = sum(procs.anon_bytes(p) for p in pids)
    shell_job = procs.session_of(info.main_pid) != info.main_pid
    return TreeFacts(
        info.main_pid,
        tuple(pids),
        tuple(sorted(journal)),
        mem,
        shell_job,
        tuple(f"{info.name} {u}" for u in unsupported),
    )


# Character devices CRIU restores by reopening them.
ALLOWED_DEVICES = frozenset(
    ["/dev/null", "/dev/zero", "/dev/full", "/dev/random", "/dev/urandom", "/dev/net/tun"]
)


def _sandbox_problems(pid: int) -> list[str]:
    """The namespaces and flags of PID's sandbox that this version cannot restore."""
    out = []
    if procs.namespace(pid, "user") != procs.namespace("self", "user"):
        out.append("runs in its own user namespace (PrivateUsers=): CRIU cannot dump that")
    if procs.namespace(pid, "mnt") != procs.namespace("self", "mnt"):
        out.append(
            "runs in its own mount namespace (PrivateTmp=, ProtectSystem=, ProtectHome=, "
            "PrivateDevices=, ReadWritePaths=, …): not supported yet"
        )
    if procs.namespace(pid, "net") != procs.namespace("self", "net"):
        out.append("runs in its own network namespace (PrivateNetwork=): not supported yet")
    if procs.status_field(pid, "NoNewPrivs") == "1":
        out.append("has NoNewPrivileges= set, which CRIU 3.17 would drop on restore")
    return out


def _common_options(images: Path, log: Path, shell_job: bool) -> list[str]:
    """Options dump and restore must agree on."""
    argv = ["--images-dir", str(images), "--log-file", str(log), "-v4", "--file-locks", "--ext-unix-sk"]
    return [*argv, "--shell-job"] if shell_job else argv


def dump(facts: TreeFacts, images: Path, log: Path, *, leave_running: bool, timeout: float) -> None:
    """Dump the tree into IMAGES. Unless LEAVE_RUNNING, the tree is killed afterwards."""
    if images.exists():
        shutil.rmtree(images)
    images.mkdir(parents=True)
    argv = [CRIU, "dump", "--tree", str(facts.main_pid), *_common_options(images, log, facts.shell_job)]
    for ino in facts.journal_inodes:
        argv += ["--external", f"unix[{ino}]"]
    if leave_running:
        argv.append("--leave-running")
    try:
        run(argv, timeout=timeout)
    except CommandError as e:
        raise CheckpointError(f"criu dump failed (exit {e.returncode}): {log_tail(log)}") from e


def restore(
    images: Path, pidfile: Path, log: Path, journal_inodes: list[int], timeout: float, shell_job: bool = False
) -> None:
    """Restore the tree from IMAGES, detached; its root's PID goes to PIDFILE.

    The dumped journal streams are replaced by our own stdout, which systemd
    connected to the journal for this unit.
    """
    argv = [
        CRIU,
        "restore",
        "--restore-detached",
        "--pidfile",
        str(pidfile),
        *_common_options(images, log, shell_job),
    ]
    for ino in journal_inodes:
        argv += ["--inherit-fd", f"fd[1]:socket:[{ino}]"]
    try:
        run(argv, timeout=timeout, inherit_stdout=True)
    except CommandError as e:
        raise RestoreError(f"criu restore failed (exit {e.returncode}): {log_tail(log)}") from e


def log_tail(log: Path, lines: int = 6) -> str:
    """The last error lines of a CRIU log, for messages."""
    try:
        text = log.read_text(errors="replace").splitlines()
    except OSError:
        return "(no log)"
    errors = [ln for ln in text if "Error" in ln or "error" in ln or "FAIL" in ln]
    return " | ".join((errors or text)[-lines:]).strip()


def checksum_tree(images: Path) -> dict[str, str]:
    out = {}
    for path in sorted(images.rglob("*")):
        if path.is_file() and not path.is_symlink():
            h = hashlib.sha256()
            with path.open("rb") as f:
                for chunk in iter(lambda: f.read(1 << 20), b""):
                    h.update(chunk)
            out[str(path.relative_to(images))] = h.hexdigest()
    return out


def tree_size(images: Path) -> int:
    return sum(p.stat().st_size for p in images.rglob("*") if p.is_file() and not p.is_symlink())


def now() -> float:
    return time.time()
