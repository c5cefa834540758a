"""The persistent-memory device that carries the images across kexec."""

from __future__ import annotations

import os
from pathlib import Path

from seamless_systemd.errors import SeamlessError
from seamless_systemd.hugemem import parse_iomem
from seamless_systemd.log import log
from seamless_systemd.run import run

LABEL = "seamless"
HOW_TO_RESERVE = (
    "reserve RAM for it on the kernel command line, e.g. memmap=512M!1536M (a range of "
    "RAM that is free, see /proc/iomem), via GRUB_CMDLINE_LINUX in /etc/default/grub, "
    "then update-grub and reboot; load the modules libnvdimm nd_e820 nd_pmem"
)


def legacy_ranges(iomem: Path = Path("/proc/iomem")) -> list[tuple[int, int]]:
    """(start, end exclusive) of 'Persistent Memory (legacy)' ranges (memmap=…!… reservations)."""
    return [
        (r.start, r.end) for r in parse_iomem(iomem.read_text()) if r.name == "Persistent Memory (legacy)"
    ]


def device_ranges(device: Path) -> tuple[tuple[int, int], ...]:
    """(start, end exclusive) of the memory behind pmem DEVICE; every legacy range if not known."""
    res = Path("/sys/class/block") / os.path.realpath(device).rsplit("/", 1)[-1] / "device/resource"
    try:
        start = int(res.read_text(), 16)
        return ((start, start + device_size(device)),)
    except (OSError, ValueError):
        return tuple(legacy_ranges())


def device_size(device: Path) -> int:
    size = Path("/sys/class/block") / device.name / "size"
    return int(size.read_text()) * 512


def is_mounted(mountpoint: Path) -> str | None:
    """The device mounted at MOUNTPOINT, or None."""
    for line in Path("/proc/self/mounts").read_text().splitlines():
        fields = line.split()
        if len(fields) > 2 and fields[1] == str(mountpoint):
            return fields[0]
    return None


def fs_label(device: Path) -> tuple[str, str]:
    """(TYPE, LABEL) of the file system on DEVICE; empty strings if none."""
    proc = run(["blkid", "-p", "-o", "export", str(device)], check=False)
    values = dict(line.split("=", 1) for line in proc.stdout.splitlines() if "=" in line)
    return values.get("TYPE", ""), values.get("LABEL", "")


def prepare(device: Path, mountpoint: Path) -> None:
    """Make sure DEVICE carries our file system and is mounted at MOUNTPOINT.

    A device without any file system is formatted; one with a file system
    that is not ours is refused (we never format what we did not make).
    """
    if not device.is_block_device():
        raise SeamlessError(f"{device} does not exist or is not a block device: {HOW_TO_RESERVE}")
    mounted = is_mounted(mountpoint)
    if mounted:
        if os.path.realpath(mounted) != os.path.realpath(device):
            raise SeamlessError(f"{mountpoint} is already a mount of {mounted}, not of {device}")
        os.chmod(mountpoint, 0o700)
        return
    fstype, label = fs_label(device)
    if not fstype:
        log.info("Formatting %s for the images (ext4, 4 KiB blocks for DAX)", device)
        run(["mkfs.ext4", "-q", "-F", "-b", "4096", "-L", LABEL, "-O", "^has_journal", str(device)])
    elif fstype != "ext4" or label != LABEL:
        raise SeamlessError(
            f"{device} holds a {fstype} file system labelled {label!r}, not ours; if its contents "
            f"are not needed, wipe it with 'wipefs -a {device}' and try again"
        )
    mountpoint.mkdir(parents=True, exist_ok=True)
    proc = run(["mount", "-o", "dax", str(device), str(mountpoint)], check=False)
    if proc.returncode != 0:
        log.debug("DAX mount failed (%s), mounting without DAX", proc.stderr.strip())
        run(["mount", str(device), str(mountpoint)])
    # The images hold the memory of the services (keys, passwords): root only.
    os.chmod(mountpoint, 0o700)


def capacity_bytes(mountpoint: Path) -> int:
    """Bytes the file system at MOUNTPOINT can hold when empty (roughly)."""
    st = os.statvfs(mountpoint)
    return st.f_blocks * st.f_frsize
