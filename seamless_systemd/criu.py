"""Checkpoint and restore of one unit's process tree with CRIU."""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import os
import re
import shutil
import signal
import stat
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from seamless_systemd import kobjects, netlock, procs, sandbox, sockets, sysv, volatile
from seamless_systemd.errors import CheckpointError, CommandError, RestoreError
from seamless_systemd.log import journal, log
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
    # Regular files on tmpfs the tree has open or mapped (carried across, see volatile).
    volatile_files: tuple[str, ...] = ()
    # Unix listening sockets the tree got from a .socket unit: (inode, path).
    listen_sockets: tuple[tuple[int, str], ...] = ()
    # Open TCP connections: (local address, port, remote address, port).
    tcp_connections: tuple[tuple[str, int, str, int], ...] = ()
    # Its own mount namespace (see sandbox): the host directories of its private
    # /tmp and /var/tmp, the files it holds that were opened outside the namespace.
    mount_ns: bool = False
    private_tmp: tuple[str, ...] = ()
    outside_files: tuple[dict[str, Any], ...] = ()
    # The host's run-time mounts seen in that namespace, left out (sandbox.runtime_mounts).
    skip_mounts: tuple[str, ...] = ()
    # TCP listening and UDP sockets on a .socket unit's port: ("tcp"|"udp", address, port).
    # See docs/design.md, socket activation.
    socket_unit_inet: tuple[tuple[str, str, int], ...] = ()
    # What will not be quite the same after the restore, though the state is kept.
    warnings: tuple[str, ...] = ()
    # Listening unix sockets renamed after bind(): (bound name, path now). See sockets.renamed_after_bind.
    renamed_sockets: tuple[tuple[str, str], ...] = ()
    # System V segments of the host's IPC namespace the tree maps (see sysv): dumped with --ext-sysv-shm.
    sysv_segments: tuple[dict[str, Any], ...] = ()
    # Segments whose id is another shared mapping's inode number (sysv.clashes): CRIU would mix them up.
    shmem_clashes: tuple[str, ...] = ()


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
    unsupported: list[str] = _other_units(info, pids)
    inodes: set[int] = set()
    holders: dict[int, list[int]] = {}
    devices: set[str] = set()
    masters: set[int] = set()
    slaves: dict[int, str] = {}
    for pid in pids:
        for fd, target in procs.fds(pid).items():
            ino = procs.socket_inode(target)
            dev = procs.device_number(pid, fd) if ino is None and target.startswith("/") else None
            if ino is not None:
                inodes.add(ino)
                holders.setdefault(ino, []).append(pid)
            elif dev == PTMX:
                masters.add(_pty_index(pid, fd))
            elif dev is not None and dev[0] in PTS_MAJORS:
                slaves[(dev[0] - PTS_MAJORS[0]) * 256 + dev[1]] = target
            elif target.startswith("/") and not _device_kept(dev):
                devices.add(target)
    outside_ttys = sorted(t for n, t in slaves.items() if n not in masters)
    if outside_ttys:
        unsupported.append(
            f"uses the terminal {', '.join(outside_ttys)}, whose other end is outside the unit (CRIU "
            "restores a pseudo-terminal only with both ends)"
        )
    if devices:
        unsupported.append(f"has devices open that CRIU cannot keep: {', '.join(sorted(devices))}")
    socks = sockets.unix_sockets()
    journal = sockets.journal_streams(inodes, socks)
    # Sockets PID 1 holds too were passed by a .socket unit (socket activation).
    pid1 = {i for t in procs.fds(1).values() if (i := procs.socket_inode(t)) is not None}
    from_systemd = pid1 & inodes
    listen = sorted((ino, socks[ino].name) for ino in from_systemd if ino in socks and socks[ino].name)
    for ino in sorted(inodes - journal - from_systemd):
        s = socks.get(ino)
        if s is None or s.type == 2 or not s.peer or s.peer in inodes:
            continue  # not unix, datagram (--ext-unix-sk), unconnected, or inside the tree
        peer = socks.get(s.peer)
        where = peer.name if peer and peer.name else f"socket {s.peer}"
        unsupported.append(f"is connected to a unix socket outside the unit ({where}); CRIU cannot dump that")
        break
    renamed, warnings = sockets.renamed_after_bind(holders, socks, from_systemd)
    problems, conns, socket_unit_inet = _inet_problems(inodes, pid1)
    unsupported += problems
    unsupported += _sandbox_problems(info.main_pid)
    mount_ns = sandbox.own_mount_namespace(info.main_pid)
    unsupported += _container_problems(info.main_pid, pids)
    segments, problems = _sysv(pids)
    unsupported += problems
    clashes = sysv.clashes(pids)
    unsupported += clashes
    unsupported += kobjects.problems(pids, version())
    unsupported += _mapping_problems(pids)
    for pid in pids:
        tracer = procs.status_field(pid, "TracerPid")
        if tracer not in ("", "0"):
            unsupported.append(f"process {pid} is traced (ptrace) by PID {tracer}")
    files, deleted_bytes = volatile.find(pids)
    files = sorted({*files, *volatile.pid_files(pids), *volatile.workdir_pid_files(pids)})
    private_tmp = sandbox.private_tmp_dirs(info.main_pid) if mount_ns else []
    mem = sum(procs.anon_bytes(p) for p in pids) + volatile.size(files) + deleted_bytes
    mem += sum(volatile.tree_bytes(d) for d in private_tmp)  # copied into the images too
    shell_job = procs.session_of(info.main_pid) != info.main_pid
    return TreeFacts(
        info.main_pid,
        tuple(pids),
        tuple(sorted(journal)),
        mem,
        shell_job,
        tuple(f"{info.name} {u}" for u in unsupported),
        tuple(files),
        tuple(listen),
        tuple(conns),
        mount_ns,
        tuple(private_tmp),
        tuple(sandbox.outside_files(pids)) if mount_ns else (),
        tuple(sandbox.runtime_mounts(info.main_pid, info.name)) if mount_ns else (),
        tuple(socket_unit_inet),
        tuple(f"{info.name} {w}" for w in warnings),
        tuple(renamed),
        tuple(segments),
        tuple(clashes),
    )


def _other_units(info: UnitInfo, pids: list[int]) -> list[str]:
    """Why a tree that reaches into other units' cgroups cannot be kept ([] if it does not).

    CRIU dumps the main process's whole tree, whatever cgroup each process is
    in, and the restore puts it back in this unit. A child that systemd moved
    into a unit of its own is not this unit's: an SSH session that
    pam_systemd registered with systemd-logind (session-N.scope), whose
    session FIFO CRIU cannot reopen and which logind forgets at the kexec.
    """
    home = procs.cgroup_of(info.main_pid)
    own = info.control_group.rstrip("/")
    away = []
    for pid in pids:
        where = procs.cgroup_of(pid)
        if where is None or where in (home, own) or where.startswith(own + "/"):
            continue
        away.append(f"{pid} ({procs.comm(pid)}) in {where.rsplit('/', 1)[-1] or where}")
    if not away:
        return []
    sessions = any(".scope" in a and "session-" in a for a in away)
    return [
        f"has processes that systemd moved into other units: {', '.join(away)}; CRIU would take them "
        "out of their units"
        + (
            " (SSH sessions registered with systemd-logind by pam_systemd end at the kexec, as at a "
            "reboot: keep the unit with on_unsupported: restart, or log out first)"
            if sessions
            else ""
        )
    ]


# Character devices CRIU restores by reopening them (by device number: a file
# opened outside the unit's mount namespace shows a path relative to it).
ALLOWED_DEVICES = frozenset(
    [
        (1, 3),  # /dev/null
        (1, 5),  # /dev/zero
        (1, 7),  # /dev/full
        (1, 8),  # /dev/random
        (1, 9),  # /dev/urandom
        (10, 200),  # /dev/net/tun
    ]
)


# Pseudo-terminals: the /dev/ptmx master and the /dev/pts/N slaves (majors 136-143).
# CRIU restores a pair whose both ends are in the tree (an SSH session's shell).
PTMX = (5, 2)
PTS_MAJORS = range(136, 144)


def _device_kept(dev: tuple[int, int] | None) -> bool:
    return dev is None or dev in ALLOWED_DEVICES


def _pty_index(pid: int, fd: int) -> int:
    """The pts number of the /dev/ptmx master PID holds as FD (-1 if not told)."""
    try:
        for line in (procs.PROC / str(pid) / "fdinfo" / str(fd)).read_text().splitlines():
            key, _, value = line.partition(":")
            if key == "tty-index":
                return int(value)
    except (OSError, ValueError):
        pass
    return -1


def _inet_problems(
    inodes: set[int], pid1: set[int]
) -> tuple[list[str], list[tuple[str, int, str, int]], list[tuple[str, str, int]]]:
    """TCP/UDP sockets of the tree this version cannot keep, its open TCP connections, and
    its sockets on a .socket unit's port.

    Such a socket (a TCP listener or an unconnected UDP socket) is the one
    systemd passed (PID 1 holds it too) or, in a unit restored before, the copy
    of it CRIU made, on a port PID 1 has a socket of the same kind on.
    """
    out = []
    inet = sockets.inet_sockets()
    systemd_ports = {(inet[i].proto, inet[i].local) for i in pid1 if i in inet and inet[i].kind}
    found, other, conns = set(), set(), []
    for i in sorted(inodes & set(inet)):
        s = inet[i]
        if s.kind and (i in pid1 or (s.proto, s.local) in systemd_ports):
            found.add((s.kind, *sockets.decode_address(s.local)))
        elif i in pid1:
            other.add(s.port)
        if s.established:
            conns.append(s.connection())
    if other:
        out.append(
            f"gets connected TCP/UDP socket(s) on port(s) {', '.join(map(str, sorted(other)))} from a "
            ".socket unit, which this version cannot hand over (listening sockets are kept)"
        )
    if conns and not netlock.available():
        out.append(
            f"has {len(conns)} open TCP connection(s); keeping them needs iptables and ip6tables "
            "(CRIU locks the connections with them): apt install iptables"
        )
    return out, conns, sorted(found)


def _sysv(pids: list[int]) -> tuple[list[dict[str, Any]], list[str]]:
    """The System V segments of the host's IPC namespace the tree maps, and what cannot be kept.

    A tree with an IPC namespace of its own is CRIU's to dump whole.
    """
    if not pids or procs.namespace(pids[0], "ipc") != procs.namespace("self", "ipc"):
        return [], []
    segments, problems = sysv.segments(pids)
    if segments and EXT_SYSV_SHM not in help_text():
        problems.append(
            "uses System V shared memory in the host's IPC namespace, which this CRIU cannot keep: it "
            "dumps System V memory only with an IPC namespace of the tree's own (criu/cr-dump.c, "
            f"check_sysvipc_map_dump). A CRIU with {EXT_SYSV_SHM} keeps it: build it with "
            "packaging/criu/0001-ext-sysv-shm.patch (docs/criu-patches.md)"
        )
    return segments, problems


# CRIU reads the page map of a process's longest mapping into one buffer, 8
# bytes per page (24 with the PAGEMAP_SCAN ioctl of Linux 6.7+): criu/mem.c,
# pmc_init. A service that reserves a huge address range it may never use
# (MariaDB's buffer pool reserves 8 TiB by default) makes that buffer larger than
# the machine.
PAGEMAP_ENTRY = 8


def _mapping_problems(pids: list[int]) -> list[str]:
    free = procs.meminfo("MemAvailable")
    for pid in pids:
        size, path = procs.longest_mapping(pid)
        need = size // 4096 * PAGEMAP_ENTRY
        if free and need > free:
            what = f"of {path}" if path else "of anonymous memory"
            fix = kobjects.FIXES.get(("huge-mapping", procs.comm(pid)))
            return [
                f"process {pid} ({procs.comm(pid)}) has a mapping {what} of {_gib(size)} (address space "
                f"reserved, mostly unused); CRIU reads its page map in one buffer of {_gib(need)}, more "
                f"than the {_gib(free)} of memory available" + (f"; {fix}" if fix else "")
            ]
    return []


def _gib(n: int) -> str:
    return f"{n / (1 << 30):.1f} GiB" if n >= 1 << 30 else f"{n >> 20} MiB"


def _container_problems(main_pid: int, pids: list[int]) -> list[str]:
    """A container below the main process: its processes live in a child PID namespace."""
    own = procs.namespace(main_pid, "pid")
    inner = [p for p in pids if procs.namespace(p, "pid") not in ("", own)]
    if not inner:
        return []
    what = "a systemd-nspawn container" if procs.comm(main_pid) == "systemd-nspawn" else "a container"
    return [
        f"runs {what}: processes {inner[:3]} live in a PID namespace below the main process's, and "
        "CRIU cannot dump nested PID namespaces (see docs/design.md, containers)"
    ]


def _sandbox_problems(pid: int) -> list[str]:
    """The namespaces and flags of PID's sandbox that this version cannot restore."""
    out = []
    if procs.namespace(pid, "user") != procs.namespace("self", "user"):
        out.append(
            "runs in its own user namespace (PrivateUsers=), which cannot be restored with the same "
            "PIDs: systemd makes it after the unit's mount namespace, so each process would have to be "
            "made in the host's user namespace and enter its own afterwards, but the kernel lets only "
            "a single-threaded process enter a user namespace, and gives a chosen PID only to a task "
            "with CAP_CHECKPOINT_RESTORE in the host's user namespace (see docs/design.md, "
            "PrivateUsers=; CRIU refuses it in criu/namespaces.c, check_user_ns). A drop-in with "
            "'PrivateUsers=no' lets it be preserved"
        )
    if procs.namespace(pid, "net") != procs.namespace("self", "net"):
        out.append("runs in its own network namespace (PrivateNetwork=): not supported yet")
    if procs.namespace(pid, "ipc") != procs.namespace("self", "ipc"):
        # CRIU would dump the namespace, but restoring such a unit failed in the
        # test VM (docs/platform.md, PrivateIPC=).
        out.append("runs in its own IPC namespace (PrivateIPC=): not supported yet")
    if procs.status_field(pid, "NoNewPrivs") == "1" and (version() or (0,)) < NO_NEW_PRIVS_KEPT:
        have = ".".join(map(str, version() or ())) or "unknown"
        out.append(
            f"has NoNewPrivileges= set (also implied by DynamicUser= and seccomp settings), which "
            f"CRIU before 3.19 drops on restore (this one: {have})"
        )
    return out


# CRIU keeps the no_new_privs flag from 3.19 on (checkpoint-restore/criu#2228).
NO_NEW_PRIVS_KEPT = (3, 19)


# The options of the CRIU patches in packaging/criu/ (docs/criu-patches.md): System V
# memory outside the tree's IPC namespace (see sysv), and the pages an incremental
# dump leaves in its parent images restored lazily too (docs/lazy-restore.md).
EXT_SYSV_SHM = "--ext-sysv-shm"
LAZY_PARENT_PAGES = "--lazy-parent-pages"


def parent_options() -> list[str]:
    """Options of a dump or pre-dump that builds on a parent: its pages there may be restored lazily.

    Harmless to a restore that is not lazy (it reads them from the parent as always), so given
    whenever this CRIU has it.
    """
    return [LAZY_PARENT_PAGES] if LAZY_PARENT_PAGES in help_text() else []


@functools.cache
def help_text() -> str:
    """criu --help: which options this CRIU has ('' if it cannot be run)."""
    try:
        return run([CRIU, "--help"], timeout=30).stdout
    except CommandError:
        return ""


@functools.cache
def version() -> tuple[int, ...] | None:
    """CRIU's version, e.g. (3, 17, 1); None if it cannot be run."""
    try:
        out = run([CRIU, "--version"], timeout=30).stdout
    except CommandError:
        return None
    m = re.search(r"Version:\s*(\d+(?:\.\d+)*)", out)
    return tuple(int(x) for x in m.group(1).split(".")) if m else None


def _common_options(images: Path, log: Path, shell_job: bool, tcp: bool, sysv_shm: bool) -> list[str]:
    """Options dump and restore must agree on."""
    argv = ["--images-dir", str(images), "--log-file", str(log), "-v4", "--file-locks", "--ext-unix-sk"]
    if shell_job:
        argv.append("--shell-job")
    if tcp:
        argv.append("--tcp-established")
    if sysv_shm:
        argv.append(EXT_SYSV_SHM)
    return argv


def uses_tcp_established(facts: TreeFacts) -> bool:
    """Dump with --tcp-established: when there are connections, or could be by the time of the dump."""
    return bool(facts.tcp_connections) or netlock.available()


def dump(
    facts: TreeFacts,
    images: Path,
    log: Path,
    *,
    leave_running: bool,
    timeout: float,
    save: list[tuple[str, Path]] | None = None,
    track_mem: bool = False,
    parent: str | None = None,
) -> None:
    """Dump the tree into IMAGES. Unless LEAVE_RUNNING, the tree is killed afterwards.

    SAVE: directories to copy (to the paths given) while the tree is frozen.
    TRACK_MEM: clear the soft-dirty bits, so that a later round writes only what changed.
    PARENT: the pre-dump round (a directory in IMAGES, see predump) this dump builds on.
    """
    if images.exists() and parent:
        # Only the pre-dump rounds (pre-N, PARENT the last of them) stay.
        for entry in images.iterdir():
            if not entry.name.startswith("pre-"):
                shutil.rmtree(entry) if entry.is_dir() and not entry.is_symlink() else entry.unlink()
    elif images.exists():
        shutil.rmtree(images)
    images.mkdir(parents=True, exist_ok=True)
    tcp = uses_tcp_established(facts)
    argv = [
        CRIU,
        "dump",
        "--tree",
        str(facts.main_pid),
        *_common_options(images, log, facts.shell_job, tcp, bool(facts.sysv_segments)),
    ]
    for ino in facts.journal_inodes:
        argv += ["--external", f"unix[{ino}]"]
    if facts.mount_ns:
        argv += sandbox.DUMP_OPTIONS
        argv += [a for p in facts.skip_mounts for a in ("--skip-mnt", p)]
        argv += [a for f in facts.outside_files for a in ("--external", f["external"])]
    env = None
    if save:
        argv += ["--action-script", sandbox.ACTION_SCRIPT]
        env = {**os.environ, "SEAMLESS_SAVE": "\n".join(f"{d}\t{copy}" for d, copy in save)}
    # Deleted files still open go into the images; the default limit (1 MiB) is low.
    argv += ["--ghost-limit", str(GHOST_LIMIT)]
    if leave_running:
        argv.append("--leave-running")
    if track_mem or parent:
        argv.append("--track-mem")
    if parent:
        # Pages not dirtied since PARENT stay there; those written again are punched out of it.
        argv += ["--prev-images-dir", parent, "--auto-dedup", *parent_options()]
    probe_kernel()
    with sockets.bound_names_linked(facts.main_pid, facts.renamed_sockets):
        try:
            run(argv, timeout=timeout, env=env)
        except CommandError as e:
            raise CheckpointError(failed("dump", log, e, timeout)) from e


# CRIU probes the kernel once per boot and keeps what it found on /run
# (kerndat.c); one probe makes a directory in /tmp, which a full root file
# system refuses, and then every dump and restore fails before it starts.
KERNDAT_CACHES = (Path("/run/criu/criu.kdat"), Path("/run/criu.kdat"))


def _kernel_probed() -> bool:
    """Whether a criu of this boot has kept what it found of the kernel."""
    return any(p.exists() for p in KERNDAT_CACHES)


def probe_kernel() -> None:
    """Have CRIU's kernel probe done even when /tmp takes no new directory (a full root file system)."""
    if _kernel_probed():
        return
    try:
        os.rmdir(tempfile.mkdtemp(prefix=".seamless-probe.", dir="/tmp"))
        return  # CRIU can probe for itself
    except OSError as e:
        why = e.strerror
    log.warning("/tmp takes no new directory (%s): CRIU probes the kernel with a /tmp of its own", why)
    # A private mount namespace with a small tmpfs on /tmp; /run, where the result goes, is shared.
    script = 'mount -t tmpfs -o size=1M,mode=1777 seamless-criu-probe /tmp && exec "$0" check'
    try:
        run(
            ["unshare", "--mount", "--propagation", "private", "sh", "-c", script, CRIU],
            timeout=120,
            check=False,
        )
    except CommandError as e:
        log.warning("CRIU's kernel probe could not run: %s", e)
    if not _kernel_probed():
        log.warning(
            "CRIU kept no kernel probe (%s); it will try again itself", " or ".join(map(str, KERNDAT_CACHES))
        )


# How long the background probe of the kernel may take before it is stopped.
PROBE_TIMEOUT = 60


def start_kernel_probe() -> None:
    """Start CRIU's probe of the kernel in the background, unless this boot has its result already.

    The first criu of a boot probes the kernel before anything else (see
    KERNDAT_CACHES): in the boot after a kexec that is the first unit's
    restore, in the downtime (0.5 to 2.7 s under TCG, tests/vm/lab/criu-kerndat.sh;
    0.1 s with the result kept). seamless-restore.service starts it beside its
    checks of the images instead. A probe that fails or is not done yet costs
    nothing: the restore's own criu probes again (probe_kernel sees to a full /tmp).
    """
    if _kernel_probed():
        return
    try:
        subprocess.Popen(
            ["timeout", str(PROBE_TIMEOUT), CRIU, "check", "--feature", "mem_dirty_track"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
    except OSError as e:
        log.debug("CRIU's kernel probe did not start: %s", e)


GHOST_LIMIT = 256 << 20


def restore(
    images: Path,
    pidfile: Path,
    log: Path,
    inherit: list[tuple[int, str]],
    timeout: float,
    shell_job: bool = False,
    tcp: bool = False,
    root: Path | None = None,
    remount: list[list[Any]] | None = None,
    sysv_shm: bool = False,
    lazy: bool = False,
    gate: Path | None = None,
    tcp_scales: Path | None = None,
) -> int | None:
    """Restore the tree from IMAGES, detached; its root's PID goes to PIDFILE.

    INHERIT maps our file descriptors to the dumped files they replace
    ("socket:[INO]"): the journal stream systemd gave this unit (fd 1) for the
    old one, the sockets of its .socket units for the old boot's.

    LAZY: the private anonymous memory is left out of the restore and served
    from the images when the tree touches it, and in the background until all
    of it is in (criu lazy-pages, see docs/lazy-restore.md). Returns the PID of
    that server, or None when the restore was eager (asked so, or the server
    could not start).

    GATE: a file the tree waits for before it runs (CRIU's post-restore
    action): "ok" lets it run, anything else makes the restore fail.

    TCP_SCALES: before the tree runs, its TCP connections get back the window
    scales CRIU did not restore (netlock.repair_window_scales); the ones fixed
    are listed (JSON) in this file.
    """
    argv = [
        CRIU,
        "restore",
        "--restore-detached",
        "--pidfile",
        str(pidfile),
        *_common_options(images, log, shell_job, tcp, sysv_shm),
    ]
    server = _start_lazy_pages(images, log.with_name(log.stem + ".lazy.log")) if lazy else None
    if server is not None:
        argv.append("--lazy-pages")
    env: dict[str, str] = {}
    if root is not None:  # its own mount namespace, rebuilt from ROOT (see sandbox)
        argv += ["--root", str(root), *sandbox.DUMP_OPTIONS]
        if remount:
            env.update(sandbox.remount_env(remount))
    if gate is not None:
        env["SEAMLESS_PAGES_VERDICT"] = str(gate)
    if tcp_scales is not None:
        tcp_scales.unlink(missing_ok=True)
        env["SEAMLESS_TCP_SCALES"] = str(tcp_scales)
    if env:  # one action script does both (CRIU runs each one given at every action)
        argv += ["--action-script", sandbox.ACTION_SCRIPT]
    for fd, what in inherit:
        argv += ["--inherit-fd", f"fd[{fd}]:{what}"]
    probe_kernel()
    try:
        run(
            argv,
            timeout=timeout,
            inherit_stdout=True,
            pass_fds=tuple(fd for fd, _ in inherit if fd > 2),
            env={**os.environ, **env} if env else None,
        )
    except CommandError as e:
        if server is not None:
            # Nothing is left for it to serve (CRIU kills a tree it could not restore).
            with contextlib.suppress(OSError):
                os.kill(server, signal.SIGKILL)
        raise RestoreError(failed("restore", log, e, timeout)) from e
    return server


LAZY_SOCKET = "lazy-pages.socket"


def _start_lazy_pages(images: Path, log_file: Path) -> int | None:
    """Start criu lazy-pages for IMAGES (it daemonizes once it listens); its PID, or None if it failed.

    It stays in the caller's cgroup (the unit's) until every page is in. The
    restored tree's memory depends on it until then: it is the last process
    the OOM killer may take.
    """
    pidfile = log_file.with_suffix(".pid")
    pidfile.unlink(missing_ok=True)
    (images / LAZY_SOCKET).unlink(missing_ok=True)
    argv = [CRIU, "lazy-pages", "--images-dir", str(images), "--work-dir", str(images)]
    argv += ["--log-file", str(log_file), "-v2", "--daemon", "--pidfile", str(pidfile)]
    try:
        run(argv, timeout=60)
        pid = int(pidfile.read_text().strip())
    except (CommandError, OSError, ValueError) as e:
        log.warning("criu lazy-pages did not start (%s): restoring all the memory now", e)
        return None
    with contextlib.suppress(OSError):
        Path(f"/proc/{pid}/oom_score_adj").write_text("-1000\n")
    return pid


def failed(what: str, log: Path, e: CommandError | None = None, timeout: float | None = None) -> str:
    """The reason for a failed criu WHAT, in words; CRIU's own last lines go to the journal."""
    journal.error("criu %s failed, the end of its log %s:\n%s", what, log, log_tail(log))
    if e is not None and e.returncode == -1:
        limit = f" within {timeout:.0f} s" if timeout is not None else ""
        return f"criu {what} did not finish{limit} and was stopped (CRIU's log: {log})"
    if e is not None and e.returncode < 0:
        try:
            name = signal.Signals(-e.returncode).name
        except ValueError:
            name = f"signal {-e.returncode}"
        return f"criu {what} was killed ({name}) before it finished (CRIU's log: {log})"
    return f"criu {what} failed: {kobjects.explain(log)}"


def log_tail(log: Path, lines: int = 20) -> str:
    """The last error lines of a CRIU log (the whole tail if it has none), for the journal."""
    try:
        text = log.read_text(errors="replace").splitlines()
    except OSError:
        return "(no log)"
    errors = [ln for ln in text if "Error" in ln or "error" in ln or "FAIL" in ln]
    return "\n".join((errors or text)[-lines:]).strip()


_PARENT_LINK = re.compile(r"^(\.\./)?pre-[0-9]+$")


def _entries(images: Path) -> Iterator[Path]:
    """IMAGES and what is below it, but not inside the seamless-* copies (their own modes are kept)."""
    yield images
    for top, dirs, files in os.walk(images):
        names = dirs + files
        if Path(top) == images:
            dirs[:] = [d for d in dirs if not d.startswith("seamless-")]
        for name in names:
            yield Path(top) / name


def seal_modes(images: Path) -> None:
    """Make the image tree root's only: directories 0700, files 0600 (before the checksums are taken)."""
    for path in _entries(images):
        if path.is_symlink():
            continue
        os.chmod(path, 0o700 if path.is_dir() else 0o600)


def tree_problem(images: Path) -> str | None:
    """Why the image tree IMAGES holds something CRIU never writes; None if it holds only images.

    CRIU writes regular files, and a ``parent`` link to the pre-dump round a
    dump builds on (see predump). Anything else (another symbolic link, a
    device, a FIFO) could make the restore read what is not an image. The
    seamless-* directories are not CRIU's: they hold copies of a unit's tmpfs
    files and private /tmp (see volatile, sandbox), links and FIFOs included.
    The tree was made root's only when it was sealed (seal_modes): an owner or
    a mode that changed since means someone else had a hand in it.
    """
    for path in _entries(images):
        rel = path.relative_to(images) if path != images else Path(".")
        st = path.lstat()
        if stat.S_ISLNK(st.st_mode):
            target = os.readlink(path)
            if path.name != "parent" or not _PARENT_LINK.match(target):
                return f"unexpected symbolic link {rel} -> {target}"
            continue
        if not (stat.S_ISDIR(st.st_mode) or stat.S_ISREG(st.st_mode)):
            return f"{rel} is not a regular file"
        if st.st_uid != 0 or stat.S_IMODE(st.st_mode) & 0o077:
            mode = stat.S_IMODE(st.st_mode)
            return f"{rel} is owned by UID {st.st_uid} with mode {mode:04o}; it was root's only when sealed"
    return None


def tree_size(images: Path) -> int:
    """The room the images take on their file system: allocated blocks, not file lengths.

    CRIU's --auto-dedup punches the pages a later dump wrote again out of the
    pre-dump rounds; those holes take no room.
    """
    files = [p for p in images.rglob("*") if p.is_file() and not p.is_symlink()]
    return sum(p.stat().st_blocks * 512 for p in files)


def now() -> float:
    return time.time()
