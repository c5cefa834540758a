"""Files on tmpfs that a process tree uses, carried across the kexec.

CRIU dumps the memory of a process, not the files it has open or mapped: on
restore it opens them again by path. Files on disk are still there after the
kexec; files on tmpfs (/run, /dev/shm, a tmpfs /tmp) are not. A POSIX shared
memory segment is such a file, and so is a lock or state file in /run.

So the checkpoint copies every regular tmpfs file the tree has open or mapped
(held open from before the dump, copied after it, when nobody writes to it any
more) into the images, with its owner, mode and times and those of its parent
directories; the restore puts back what is missing before CRIU runs. A file that exists again in the new
boot is left alone (if its size differs, CRIU refuses and the unit starts
afresh, with the reason in the report). Deleted files are not ours to carry:
CRIU keeps their contents itself ("ghost files").
"""

from __future__ import annotations

import os
import shutil
import stat
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from seamless_systemd import procs

VOLATILE_FS = frozenset(["tmpfs", "ramfs"])
DELETED = " (deleted)"


def volatile_devices() -> dict[int, str]:
    """st_dev -> mount point of every tmpfs/ramfs mount in our mount namespace."""
    out = {}
    for m in procs.mounts("self"):
        if m.fstype in VOLATILE_FS:
            major, minor = m.dev.split(":")
            out[os.makedev(int(major), int(minor))] = m.point
    return out


def _mapped(pid: int) -> Iterable[str]:
    """Absolute paths PID has mapped."""
    try:
        maps = (procs.PROC / str(pid) / "maps").read_text()
    except OSError:
        return
    for line in maps.splitlines():
        parts = line.split(None, 5)
        if len(parts) == 6 and parts[5].startswith("/"):
            yield parts[5]


def find(pids: Iterable[int]) -> tuple[list[str], int]:
    """The regular tmpfs files PIDS use, and the bytes of deleted files they hold open."""
    devices = volatile_devices()
    found: set[str] = set()
    deleted_bytes = 0
    for pid in pids:
        fds = {fd: t for fd, t in procs.fds(pid).items() if t.startswith("/")}
        for fd, target in fds.items():
            if target.endswith(DELETED):
                try:
                    deleted_bytes += os.stat(procs.PROC / str(pid) / "fd" / str(fd)).st_size
                except OSError:
                    continue
        for path in {*fds.values(), *_mapped(pid)}:
            if path.endswith(DELETED):
                continue
            try:
                st = os.stat(path)
            except OSError:
                continue
            if stat.S_ISREG(st.st_mode) and st.st_dev in devices:
                found.add(path)
    return sorted(found), deleted_bytes


# Where daemons write their PID files, and how deep to look for them.
RUN = Path("/run")
PID_FILE_DEPTH = 2
SKIP_IN_RUN = frozenset(["seamless", "systemd", "user", "credentials", "udev", "log"])


def pid_files(pids: Iterable[int], run: Path = RUN) -> list[str]:
    """The PID files (NAME.pid in /run, holding one of PIDS) the tree wrote for its tools.

    A daemon writes its PID file once, at start; the file is not open, so CRIU
    does not know it, and it goes with /run. Tools find the daemon by it
    (`apachectl graceful`, behind `systemctl reload apache2`, signals the PID
    in /run/apache2/apache2.pid): the checkpoint carries it like the other
    tmpfs files.
    """
    wanted = {str(p) for p in pids}
    out = []
    for top, dirs, names in os.walk(run):
        depth = len(Path(top).relative_to(run).parts)
        dirs[:] = [] if depth >= PID_FILE_DEPTH else [d for d in dirs if depth or d not in SKIP_IN_RUN]
        for name in names:
            path = os.path.join(top, name)
            if not name.endswith(".pid"):
                continue
            try:
                st = os.lstat(path)
                if not stat.S_ISREG(st.st_mode) or st.st_size > 24:
                    continue
                with open(path) as f:
                    if f.read().strip() in wanted:
                        out.append(path)
            except (OSError, UnicodeDecodeError):
                continue
    return sorted(out)


def workdir_pid_files(pids: Iterable[int], proc: Path = Path("/proc")) -> list[str]:
    """The lock files (NAME.pid, first line one of PIDS) in the tree's working directories.

    A server may keep its lock file in its data directory, on disk: PostgreSQL's
    postmaster.pid (PID, data directory, port, shared memory key). It is not
    open either. When the checkpoint has killed the tree, the unit's own stop
    command finds a dead PID in it and removes it as stale (pg_ctlcluster does),
    and the restored server then shuts itself down, its lock file gone. So
    these are carried too, and put back if missing. The file must be the same
    one seen through /proc/PID/cwd and by its path (a sandbox's own mounts
    aside).
    """
    wanted = {str(p) for p in pids}
    out = set()
    for pid in wanted:
        cwd = proc / pid / "cwd"
        try:
            where = os.readlink(cwd)
            names = [n for n in os.listdir(cwd) if n.endswith(".pid")]
        except OSError:
            continue
        if where == "/" or not where.startswith("/"):
            continue
        for name in names:
            try:
                st = os.stat(cwd / name, follow_symlinks=False)
                if not stat.S_ISREG(st.st_mode) or st.st_size > 4096:
                    continue
                seen = os.stat(os.path.join(where, name), follow_symlinks=False)
                if (seen.st_dev, seen.st_ino) != (st.st_dev, st.st_ino):
                    continue
                with open(cwd / name) as f:
                    if f.readline().strip() in wanted:
                        out.add(os.path.join(where, name))
            except (OSError, UnicodeDecodeError):
                continue
    return sorted(out)


def size(paths: Iterable[str]) -> int:
    total = 0
    for p in paths:
        try:
            total += os.stat(p).st_size
        except OSError:
            continue
    return total


def tree_bytes(directory: str) -> int:
    """Bytes of the regular files below DIRECTORY (0 if it is gone)."""
    total = 0
    for root, _dirs, names in os.walk(directory):
        for name in names:
            try:
                st = os.lstat(os.path.join(root, name))
            except OSError:
                continue
            if stat.S_ISREG(st.st_mode):
                total += st.st_size
    return total


def _meta(path: Path) -> dict[str, Any]:
    st = path.stat()
    return {
        "path": str(path),
        "mode": stat.S_IMODE(st.st_mode),
        "uid": st.st_uid,
        "gid": st.st_gid,
        "atime_ns": st.st_atime_ns,
        "mtime_ns": st.st_mtime_ns,
    }


class Held:
    """The tmpfs files of a tree, held open across its dump.

    Opened (and their metadata taken) before the dump; copied after it, when
    the tree is frozen for good. Copying from our own descriptors matters:
    once CRIU kills the tree, systemd removes the unit's RuntimeDirectory=
    at once, and the names are gone before we could copy by path.
    """

    def __init__(self, paths: Iterable[str]) -> None:
        self._items: list[tuple[int, dict[str, Any]]] = []
        devices = volatile_devices()
        for name in sorted(paths):
            path = Path(name)
            try:
                fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
            except OSError:
                continue  # removed meanwhile: CRIU then refuses, or the tree did not need it
            dev = os.fstat(fd).st_dev
            parents = []
            for parent in path.parents:
                if str(parent) == devices.get(dev) or parent.stat().st_dev != dev:
                    break
                parents.append(_meta(parent))
            self._items.append((fd, {**_meta(path), "parents": parents}))

    def __enter__(self) -> Held:
        return self

    def __exit__(self, *exc: object) -> None:
        for fd, _ in self._items:
            os.close(fd)
        self._items = []

    def save(self, dest: Path) -> list[dict[str, Any]]:
        """Copy the files into DEST (numbered); return what put_back needs to know."""
        entries = []
        for i, (fd, meta) in enumerate(self._items):
            dest.mkdir(parents=True, exist_ok=True)
            with (dest / str(i)).open("wb") as out:
                offset = 0
                while chunk := os.pread(fd, 1 << 20, offset):
                    out.write(chunk)
                    offset += len(chunk)
            entries.append({**meta, "copy": str(i)})
        return entries


def put_back(entries: list[dict[str, Any]], src: Path) -> tuple[list[str], list[str]]:
    """Recreate the carried files that are missing; return (restored, left alone)."""
    restored, kept = [], []
    for e in entries:
        path = Path(e["path"])
        if path.exists():
            kept.append(str(path))
            continue
        for parent in reversed(e["parents"]):
            p = Path(parent["path"])
            if not p.exists():
                p.mkdir()
                _apply(p, parent)
        tmp = path.with_name(f".{path.name}.seamless")
        shutil.copyfile(src / e["copy"], tmp)
        _apply(tmp, e)
        os.rename(tmp, path)
        restored.append(str(path))
    return restored, kept


def _apply(path: Path, meta: dict[str, Any]) -> None:
    os.chown(path, meta["uid"], meta["gid"])
    os.chmod(path, meta["mode"])
    os.utime(path, ns=(meta["atime_ns"], meta["mtime_ns"]))
