"""Units with their own mount namespace (PrivateTmp=, ProtectSystem=, PrivateDevices=, …).

systemd builds the namespace from the host's mounts: read-only binds of /usr
and /etc, a private /dev, private /tmp and /var/tmp bound from
/tmp/systemd-private-BOOTID-UNIT-XXXX/tmp. CRIU dumps the namespace's mounts
relative to the host's (--ext-mount-map auto, --enable-external-masters,
--enable-external-sharing) and rebuilds it on restore from a root we give it:
a read-only bind of / (--root). What it needs besides:

- the old private tmp directories, under their old names (the new boot has
  none; systemd removed them when the tree died) and with their contents:
  copied at the dump by our action script (post-dump: the tree is frozen,
  not yet killed), copied back before the restore;
- the files the tree holds that were opened outside the namespace (stdin
  /dev/null, opened by systemd before it set the namespace up): dumped as
  external, and on restore the same path opened by us (--inherit-fd);
- CRIU 3.17 loses the flags (read-only, …) of some mounts: systemd's
  "inaccessible" ones (ProtectHome=, InaccessiblePaths=, /run/credentials in
  every sandbox) and /run/systemd/incoming. Our action script
  (libexec/criu-action) gives every mount with a restrictive flag its
  recorded options again, inside the tree's namespace, before it resumes;
- a check afterwards: every mount must be there and no less restrictive than
  at the dump. If any came back weaker, the restored tree is killed and the
  unit starts afresh: a restore never weakens a sandbox.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import stat
import sys
from pathlib import Path
from typing import Any

from seamless_systemd import procs, systemd
from seamless_systemd.errors import CommandError
from seamless_systemd.log import log
from seamless_systemd.run import run

DUMP_OPTIONS = ["--ext-mount-map", "auto", "--enable-external-masters", "--enable-external-sharing"]
# Mount options whose absence makes a mount less restrictive.
RESTRICTIVE = ("ro", "nosuid", "nodev", "noexec")


def own_mount_namespace(pid: int) -> bool:
    return procs.namespace(pid, "mnt") != procs.namespace("self", "mnt")


def remount_env(table: list[list[Any]]) -> dict[str, str]:
    """The environment for ACTION_SCRIPT: the options to give each mount with a restrictive flag.

    CRIU 3.17 brings some mounts back without their flags (systemd's
    "inaccessible" mounts, /run/systemd/incoming); the script gives every one
    of them its recorded options again before the tree resumes.
    """
    lines = [f"{point}\t{','.join(opts)}" for point, opts in table if set(opts) & set(RESTRICTIVE)]
    return {"SEAMLESS_REMOUNT": "\n".join(lines)}


ACTION_SCRIPT = "/usr/libexec/seamless-systemd/criu-action"

# mount(2) flags of a bind remount, by the option names mountinfo shows.
_MOUNT_FLAGS = {
    "ro": 1,  # MS_RDONLY
    "nosuid": 2,
    "nodev": 4,
    "noexec": 8,
    "noatime": 1024,
    "nodiratime": 2048,
    "relatime": 1 << 21,
    "strictatime": 1 << 24,
}
_MS_REMOUNT, _MS_BIND, _CLONE_NEWNS = 32, 4096, 0x00020000


def remount_in(pid: int, lines: str) -> list[str]:
    """Give each mount in LINES ("POINT<tab>OPTIONS" per line) its options again, in PID's mount namespace.

    Done with setns(2) and mount(2) from this process, not by running mount(8)
    inside the namespace: a unit with NoExecPaths=/ (Debian's redis) has no
    executable /usr/bin in there. Returns what could not be remounted.
    """
    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(procs.PROC / str(pid) / "ns" / "mnt", os.O_RDONLY)
    try:
        if libc.setns(fd, _CLONE_NEWNS) != 0:
            return [f"cannot enter the mount namespace of {pid}: {os.strerror(ctypes.get_errno())}"]
    finally:
        os.close(fd)
    failed = []
    for line in filter(None, lines.splitlines()):
        point, _, opts = line.partition("\t")
        flags = _MS_REMOUNT | _MS_BIND
        for o in opts.split(","):
            flags |= _MOUNT_FLAGS.get(o, 0)
        if libc.mount(None, point.encode(), None, flags, None) != 0:
            failed.append(f"cannot remount {point} ({opts}): {os.strerror(ctypes.get_errno())}")
    return failed


def remount_main() -> int:
    """criu-action at pre-resume: SEAMLESS_REMOUNT into CRTOOLS_INIT_PID's namespace."""
    pid = os.environ.get("CRTOOLS_INIT_PID", "")
    if not pid.isdigit():
        print("seamless criu-action: no CRTOOLS_INIT_PID, cannot remount", file=sys.stderr)
        return 1
    for problem in remount_in(int(pid), os.environ.get("SEAMLESS_REMOUNT", "")):
        print(f"seamless criu-action: {problem}", file=sys.stderr)
    # What could not be put back shows in the mount check after the restore.
    return 0


def private_tmp_dirs(pid: int) -> list[str]:
    """The host directories behind PID's private /tmp and /var/tmp (PrivateTmp=)."""
    # The mount's root is a path inside its file system; where that file system
    # is mounted in the host (/, or /tmp when /tmp is a tmpfs) gives the host path.
    host = {m.dev: m.point for m in reversed(procs.mounts("self")) if m.root == "/"}
    out = set()
    for m in procs.mounts(pid):
        if m.point in ("/tmp", "/var/tmp") and "systemd-private-" in m.root and m.dev in host:
            out.add(os.path.join(host[m.dev], m.root.lstrip("/")))
    return sorted(out)


MEMFD_PREFIX = "/memfd:"


def outside_files(pids: list[int]) -> list[dict[str, Any]]:
    """Files the tree holds that were opened outside its mount namespace: CRIU must get them from us.

    Outside means on a mount the tree's namespace does not have. That is also
    true of a memfd (the kernel's internal mount), which CRIU keeps by itself,
    and of a file a restored tree was handed, whose mount may be in no
    namespace at all by now (the second upgrade found its stdin so).
    """
    out = []
    seen = set()
    for pid in pids:
        inside = {m.mount_id for m in procs.mounts(pid)}
        for fd, target in procs.fds(pid).items():
            if not target.startswith("/") or target.startswith(MEMFD_PREFIX):
                continue
            try:
                info = _fdinfo(pid, fd)
                mnt_id, flags = int(info["mnt_id"]), int(info["flags"], 8)
                st = os.stat(procs.PROC / str(pid) / "fd" / str(fd))
            except (OSError, ValueError, KeyError):
                continue
            key = f"file[{mnt_id:x}:{st.st_ino:x}]"
            if mnt_id not in inside and key not in seen:
                seen.add(key)
                entry: dict[str, Any] = {"external": key, "path": target, "flags": flags}
                # A device is found again by its number: in a restored tree the
                # stdin we handed it shows as /null (relative to its mount).
                if stat.S_ISCHR(st.st_mode):
                    entry["rdev"] = [os.major(st.st_rdev), os.minor(st.st_rdev)]
                out.append(entry)
    return out


def _fdinfo(pid: int, fd: int) -> dict[str, str]:
    text = (procs.PROC / str(pid) / "fdinfo" / str(fd)).read_text()
    return {k.strip(): v.strip() for k, _, v in (ln.partition(":") for ln in text.splitlines())}


def runtime_mounts(pid: int, unit: str) -> list[str]:
    """The host's run-time mounts that reached PID's namespace: left out of the dump.

    The host propagates its mounts into a unit's namespace, also those made
    after the unit started: a container's overlay and shm, /run/netns, a
    login's /run/user/UID. The new boot does not have them when the unit is
    restored, and CRIU would fail to bring them back (their mount points are
    gone). They are not part of the unit's sandbox, so leaving them out
    (criu --skip-mnt) hides what the host happened to have mounted, and
    weakens nothing. The unit's own credentials mount stays.
    """
    outside = procs.mounts("self")
    host = {(m.point, m.dev, m.root) for m in outside}
    mine = f"/run/credentials/{unit}"
    inside = procs.mounts(pid)
    seen = sorted({m.point for m in inside if (m.point, m.dev, m.root) in host} - {"/", mine})
    skip = systemd.runtime_mounts(seen) if seen else set()
    # What is mounted below a mount left out goes with it, in the unit's namespace
    # and in the host's, which CRIU reads too (--skip-mnt is by path; a mount
    # whose parent was skipped stops the dump).
    return sorted({m.point for m in inside + outside if any(_below(m.point, s) for s in skip)} | skip)


def _below(path: str, top: str) -> bool:
    return path == top or path.startswith(top.rstrip("/") + "/")


def snapshot(pid: int, skip: tuple[str, ...] = ()) -> list[list[Any]]:
    """PID's visible mounts as recorded at the dump: [mount point, sorted per-mount options]."""
    visible: dict[str, frozenset[str]] = {}
    for m in procs.mounts(pid):
        if m.point not in skip:
            visible[m.point] = m.options  # the last mount on a point is the one seen
    return [[point, sorted(opts)] for point, opts in visible.items()]


def _visible(table: list[list[Any]]) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for point, opts in table:
        out[point] = set(opts) & set(RESTRICTIVE)  # the last mount on a point is the one seen
    return out


def _effective(table: dict[str, set[str]], path: str) -> set[str]:
    """The restrictive flags in force at PATH: those of the mount it is on."""
    while path not in table and path != "/":
        path = os.path.dirname(path)
    return table.get(path, set())


def weaker(before: list[list[Any]], pid: int) -> list[str]:
    """Where PID's mounts restrict less than BEFORE did (empty: the sandbox is whole).

    A mount that is missing is weaker only if the path it covered is now less
    restricted (a tracefs the host has not mounted yet is not).
    """
    return weaker_than(before, snapshot(pid))


def weaker_than(before: list[list[Any]], after: list[list[Any]]) -> list[str]:
    was, now = _visible(before), _visible(after)
    out = []
    for point, flags in sorted(was.items()):
        lost = flags - _effective(now, point)
        if lost:
            state = "lost" if point in now else "is not mounted and so lost"
            out.append(f"{point} {state} {','.join(sorted(lost))}")
    return out


ROOT = Path("/run/seamless/root")


def root_writable(table: list[list[Any]]) -> bool:
    """Whether / was writable in the dumped namespace (no ProtectSystem=strict, ReadOnlyPaths=/)."""
    return "ro" not in _visible(table).get("/", {"ro"})


def restore_root(writable: bool = False) -> Path:
    """A bind of / for criu restore --root, read-only unless WRITABLE (made once per boot).

    CRIU rebuilds the namespace's root from it, with its flags: a unit whose /
    was read-only gets a read-only one, and one whose / was writable must get a
    writable one, or CRIU cannot reopen its log files or recreate its deleted
    files there (the VM found apache2 and mariadb so).
    """
    root = ROOT.with_name("root-rw") if writable else ROOT
    root.mkdir(parents=True, exist_ok=True)
    if not os.path.ismount(root):
        run(["mount", "--bind", "/", str(root)])
        if not writable:
            run(["mount", "-o", "remount,bind,ro", str(root)])
    return root


def recreate_private_tmp(dirs: list[str], saved: Path) -> None:
    """The old private /tmp directories again, with what they held at the dump (saved/N)."""
    for i, d in enumerate(dirs):
        path = Path(d)
        if not path.is_absolute() or ".." in path.parts:
            continue
        path.mkdir(parents=True, exist_ok=True)
        os.chmod(path.parent, 0o700)
        os.chmod(path, 0o1777)
        if (saved / str(i)).is_dir():
            run(["cp", "-a", "--", f"{saved / str(i)}/.", f"{path}/"])


def open_outside_files(files: list[dict[str, Any]]) -> list[tuple[int, str]]:
    """Open the dumped outside files again in the host; (fd, external id) for --inherit-fd."""
    out = []
    for f in files:
        flags = int(f.get("flags", os.O_RDONLY)) & (os.O_ACCMODE | os.O_APPEND)
        path = _device_path(f["path"], tuple(f["rdev"])) if f.get("rdev") else f["path"]
        fd = os.open(path, flags | os.O_CLOEXEC)
        out.append((fd, f["external"]))
    return out


def _device_path(path: str, rdev: tuple[int, ...]) -> str:
    """PATH if it is the character device RDEV, else a node in /dev that is (early in the
    boot udev may not have made its /dev/char/MAJOR:MINOR links yet)."""
    with contextlib.suppress(OSError):
        for entry in [path, *(e.path for e in os.scandir("/dev") if not e.is_symlink())]:
            with contextlib.suppress(OSError):
                st = os.stat(entry)
                if stat.S_ISCHR(st.st_mode) and (os.major(st.st_rdev), os.minor(st.st_rdev)) == rdev:
                    return entry
    return f"/dev/char/{rdev[0]}:{rdev[1]}"


CGROUP2 = "/sys/fs/cgroup"


def cgroup2_options(point: str = CGROUP2) -> str:
    """The super options of the host's cgroup2 mount ('rw,nsdelegate,memory_recursiveprot')."""
    for line in (procs.PROC / "self" / "mountinfo").read_text().splitlines():
        left, _, right = line.partition(" - ")
        r = right.split()
        if left.split()[4] == point and r[:1] == ["cgroup2"] and len(r) > 2:
            return r[2]
    return ""


def keep_cgroup2_options(before: str) -> None:
    """Give the host's cgroup2 its options again if a restore changed them.

    cgroup2 has one superblock, and mounting it anew sets its flags for the
    whole machine. CRIU mounts one for a sandbox's /sys/fs/cgroup without
    'nsdelegate' and 'memory_recursiveprot', and so clears them for every
    cgroup of the host (systemd mounts it with both; the hardening workload's
    check found them gone). A remount puts them back.
    """
    now = cgroup2_options()
    if not before or now == before:
        return
    wanted = ",".join(o for o in before.split(",") if o not in ("rw", "ro"))
    try:
        run(["mount", "-o", f"remount,{wanted}", CGROUP2])
    except CommandError as e:
        log.warning(
            "The restore changed the options of %s (%s -> %s) and they could not be put back: %s",
            CGROUP2,
            before,
            now,
            e,
        )


def kill_tree(pid: int) -> None:
    for p in reversed(procs.tree(pid)):
        try:
            os.kill(p, 9)
        except ProcessLookupError:
            continue


def unmount_root() -> None:
    """Drop the restore roots once nothing needs them (restore-finish)."""
    for root in (ROOT, ROOT.with_name("root-rw")):
        if os.path.ismount(root):
            with contextlib.suppress(CommandError):
                run(["umount", "--lazy", str(root)])
