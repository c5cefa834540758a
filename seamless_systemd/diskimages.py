"""pmem.mode: disk — the images on the root file system instead of in RAM.

For a machine that cannot give up RAM for the images (docs/disk-images.md):
the images go to DISK_IMAGES, bound at the usual mount point so that the
checkpoint and the restore see them where they always do. The new boot's
initramfs has the root file system mounted and binds the directory again
(initrd/seamless-mount-images); the shutdown's own sync and unmount put the
images on the disk before the kexec. The images are the services' memory
(keys, passwords): the directory is root's only, and a generation is deleted
as soon as its boot is over, restored or not.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import shutil
from pathlib import Path

from seamless_systemd.config import DISK_IMAGES
from seamless_systemd.errors import SeamlessError
from seamless_systemd.log import log
from seamless_systemd.pmem import is_mounted
from seamless_systemd.run import run


def _existing(path: Path) -> Path:
    """PATH, or its nearest ancestor that exists."""
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


@dataclasses.dataclass(frozen=True)
class DiskFacts:
    path: Path
    same_fs_as_root: bool
    free: int  # bytes, counting the generations already there (arm removes them)


def facts(path: Path = DISK_IMAGES, root: Path = Path("/")) -> DiskFacts:
    where = _existing(path)
    st = os.statvfs(where)
    return DiskFacts(
        path,
        os.stat(where).st_dev == os.stat(root).st_dev,
        st.f_bavail * st.f_frsize + _old_generations_bytes(path),
    )


def problems(room: int, f: DiskFacts) -> list[str]:
    """Why the images (ROOM bytes with room to grow) cannot go to the disk; [] if they can."""
    if not f.same_fs_as_root:
        return [
            f"pmem.mode: disk keeps the images in {f.path}, which is on another file system than /; "
            "the new boot's initramfs mounts only the root file system, so it could not find them: "
            "keep /var/lib/seamless on the root file system, or use a PMEM (pmem.mode: auto)"
        ]
    if room > f.free:
        return [
            f"the images need about {room >> 20} MiB with room to grow, but the root file system has "
            f"{f.free >> 20} MiB free for {f.path}: free some space, or use a PMEM (pmem.mode: auto)"
        ]
    return []


def _old_generations_bytes(path: Path) -> int:
    """The room the generations already in PATH take (arm removes them)."""
    total = 0
    for dirpath, _dirs, files in os.walk(path):
        for name in files:
            with contextlib.suppress(OSError):  # gone meanwhile
                total += os.lstat(os.path.join(dirpath, name)).st_blocks * 512
    return total


def _bound(mountpoint: Path, path: Path) -> bool:
    """Whether MOUNTPOINT shows PATH (a bind mount of it)."""
    try:
        a, b = os.stat(mountpoint), os.stat(path)
    except OSError:
        return False
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


def prepare(mountpoint: Path, path: Path = DISK_IMAGES) -> None:
    """Make PATH root's only and bind it at MOUNTPOINT (unless it is there already)."""
    path.mkdir(parents=True, exist_ok=True)
    os.chmod(path, 0o700)
    if _bound(mountpoint, path):
        return
    if is_mounted(mountpoint):  # os.path.ismount misses a bind of the same file system
        raise SeamlessError(
            f"{mountpoint} is a mount of something else than {path} (a PMEM of an earlier setting?); "
            f"'umount {mountpoint}' and run again, or set pmem.mode back to what it was"
        )
    mountpoint.mkdir(parents=True, exist_ok=True)
    run(["mount", "--bind", str(path), str(mountpoint)])
    os.chmod(mountpoint, 0o700)
    log.info("The images go to %s (pmem.mode: disk), bound at %s", path, mountpoint)


def remove(generation: str, path: Path = DISK_IMAGES) -> bool:
    """Delete a used generation's images from the disk; whether there were any."""
    gdir = path / generation
    if not gdir.is_dir() or "/" in generation or generation in ("", ".", ".."):
        return False
    shutil.rmtree(gdir, ignore_errors=True)
    log.info("Removed the images of upgrade %s from %s", generation, path)
    return True
