"""The files a tree holds open must be the same files at the restore.

CRIU reopens each file by its path and puts the offset back. If in between
the file went away, or something (tmpfiles, a package's maintainer script, a
cleanup job at boot) put another file at that path, the restored process
would go on in a file that is not the one it was using. So at the checkpoint
the regular files on persistent file systems the tree holds open are noted,
once the tree is dumped and gone (nothing of it writes any more): path,
inode, size. restore-prepare looks again; a file that is gone, has another
inode or another size makes the unit start afresh, with the file named in
the reason. Files on tmpfs are carried across by copy (volatile), so they are
left out; so are files whose path in the host's mount namespace is not the
file the process holds (a sandbox's private view).
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterable
from typing import Any

from seamless_systemd import procs, volatile


def held(pids: Iterable[int]) -> list[str]:
    """The regular files on persistent file systems PIDS hold open, by their path on the host."""
    tmpfs = volatile.volatile_devices()
    found: set[str] = set()
    for pid in pids:
        for fd, target in procs.fds(pid).items():
            if not target.startswith("/") or target.endswith(volatile.DELETED):
                continue
            try:
                mine = os.stat(procs.PROC / str(pid) / "fd" / str(fd))
                host = os.stat(target)
            except OSError:
                continue
            if not stat.S_ISREG(mine.st_mode) or mine.st_dev in tmpfs:
                continue
            if (mine.st_dev, mine.st_ino) == (host.st_dev, host.st_ino):
                found.add(target)
    return sorted(found)


def identities(paths: Iterable[str]) -> list[dict[str, Any]]:
    """What PATHS are now (after the dump): inode and size of each that is there."""
    out = []
    for path in paths:
        try:
            st = os.stat(path)
        except OSError:
            continue
        out.append({"path": path, "ino": st.st_ino, "size": st.st_size})
    return out


def problem(recorded: Any) -> str | None:
    """Why the files RECORDED at the checkpoint are not the same now; None if they are."""
    if not isinstance(recorded, list):
        return None
    for item in recorded:
        if not isinstance(item, dict) or not isinstance(item.get("path"), str):
            continue
        path = item["path"]
        try:
            st = os.stat(path)
        except FileNotFoundError:
            return f"the file {path} it had open is gone"
        except OSError as e:
            return f"the file {path} it had open cannot be looked at: {e.strerror or e}"
        if st.st_ino != item.get("ino"):
            return f"the file {path} it had open was replaced since the checkpoint (another file is there)"
        if st.st_size != item.get("size"):
            return (
                f"the file {path} it had open was changed since the checkpoint "
                f"(size {item.get('size')} then, {st.st_size} now)"
            )
    return None
