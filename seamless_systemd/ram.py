"""RAM on demand: the images' memory taken at arm time and given back after the restore.

The whole shape is in docs/ram-on-demand.md. In the old boot,
seamless-ram.service (``serve``) takes the RAM as hugetlb pages, serves it as
/dev/nbdN, and says where the pages are (``TAKEN``); ``arm`` makes the file
system, mounts it where the images go, and names the pages' ranges on the new
kernel's command line only (``seamless.ram=on-demand memmap=...``). In the new
boot the initramfs lays the /dev/pmemN of those ranges end to end with
device-mapper and mounts the same file system; after the last restore,
``give_back`` unmounts it and hands each range to the kernel's allocator
(devdax, then system-ram).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import mmap
import os
import signal
import time
from pathlib import Path
from typing import Any

from seamless_systemd import hugemem, kernels, nbd, pmem, procs, state, systemd
from seamless_systemd.errors import CommandError, SeamlessError
from seamless_systemd.log import log
from seamless_systemd.run import run

UNIT = "seamless-ram.service"
REQUEST = state.RUN_DIR / "ram-request.json"
TAKEN = state.RUN_DIR / "ram.json"
# The server's own hugetlbfs mount, in its private mount namespace (PrivateMounts=yes).
HUGE_DIR = state.RUN_DIR / "hugepages"
PAGE = 2 << 20
DM_NAME = "seamless-images"
DM_DEVICE = Path("/dev/mapper") / DM_NAME
MOUNT_UNIT_DIR = Path("/run/systemd/system")
LABEL = "seamless"
# Beyond the images: ext4's own metadata, the dump records, logs.
ROOM = 32 << 20
# About the length of one "LEN!0xADDR," on the command line (the lab: 13.7 on average).
BYTES_PER_RANGE = 16
# The devdax info block at the start of a range, with its struct pages kept in
# RAM (ndctl --map=mem): one 2 MiB alignment unit. hugemem.choose puts that
# unit just below a memory block, so the block itself can come back.
DEVDAX_HEAD = 2 << 20


def needed_bytes(estimate: int, minimum: int = 0) -> int:
    """The RAM to take for images of about ESTIMATE bytes: a quarter more plus ROOM, whole pages."""
    want = max(minimum, estimate + estimate // 4 + ROOM)
    return -(-want // PAGE) * PAGE


def lockdown(path: Path = Path("/sys/kernel/security/lockdown")) -> str:
    """The kernel's lockdown mode ('none', 'integrity', 'confidentiality'); 'none' if not there."""
    try:
        text = path.read_text()
    except OSError:
        return "none"
    for word in text.split():
        if word.startswith("["):
            return word.strip("[]")
    return "none"


def max_ranges(cmdline: str) -> int:
    """How many ranges the memmap= word can still name on CMDLINE (the new kernel's, without it)."""
    room = hugemem.COMMAND_LINE_MAX - 1 - len(cmdline) - len(f" {kernels.RAM_PARAM}=on-demand memmap=")
    return max(0, room // BYTES_PER_RANGE)


@dataclasses.dataclass(frozen=True)
class Facts:
    """What decides whether the RAM can be taken now (gathered by ``gather``)."""

    page_sizes: tuple[int, ...]
    mem_available: int
    free_blocks: int  # free runs of PAGE bytes the buddy allocator has now
    lockdown: str
    nbd_module: bool


def gather() -> Facts:
    try:
        blocks = hugemem.free_blocks(PAGE)
    except OSError:
        blocks = 0
    nbd_ok = Path("/sys/module/nbd").exists()
    nbd_ok = nbd_ok or run(["modprobe", "-n", "-q", "nbd"], check=False).returncode == 0
    return Facts(tuple(hugemem.page_sizes()), procs.meminfo("MemAvailable"), blocks, lockdown(), nbd_ok)


def judge(f: Facts, needed: int, cmdline: str) -> tuple[list[str], list[str]]:
    """(problems, notes) of taking NEEDED bytes on a host with facts F; CMDLINE: the new kernel's."""
    problems, notes = [], []
    if f.lockdown != "none":
        problems.append(
            f"the kernel is locked down ({f.lockdown}): only kexec_file_load is allowed, which cannot "
            "keep the new kernel off the images' RAM; use a fixed reservation instead (pmem.mode: "
            "reserved, with memmap=SIZE!OFFSET on the kernel command line)"
        )
    if PAGE not in f.page_sizes:
        problems.append("the kernel has no 2 MiB hugetlb pages (hugetlbfs); use pmem.mode: reserved")
    if not f.nbd_module:
        problems.append("the kernel has no nbd module, which serves the images' RAM as a block device")
    if needed > f.mem_available * 8 // 10:
        problems.append(
            f"the images need {needed >> 20} MiB of RAM taken at arm time, but only "
            f"{f.mem_available >> 20} MiB is available (MemAvailable; at most 80 % of it is taken): "
            "free memory, or use pmem.mode: reserved"
        )
    elif f.free_blocks * PAGE < needed:
        notes.append(
            f"only {f.free_blocks * PAGE >> 20} MiB of the {needed >> 20} MiB is free in 2 MiB blocks now: "
            "arm compacts memory first, which takes longer and may give more ranges"
        )
    room = max_ranges(cmdline)
    if room < 1:
        problems.append("the new kernel's command line has no room left for the memmap= of the images' RAM")
    else:
        notes.append(f"RAM on demand: {needed >> 20} MiB taken at arm time, in at most {room} ranges")
    return problems, notes


# ---------------------------------------------------------------- old boot


def _free_nbd() -> str:
    """The first /dev/nbdN that nothing is attached to."""
    run(["modprobe", "nbd"])
    for dev in sorted(Path("/sys/block").glob("nbd*"), key=lambda p: int(p.name[3:])):
        if not (dev / "pid").exists() and int((dev / "size").read_text()) == 0:
            return f"/dev/{dev.name}"
    raise SeamlessError("every /dev/nbdN is in use")


def _compact() -> None:
    with contextlib.suppress(OSError):
        Path("/proc/sys/vm/compact_memory").write_text("1\n")


def serve() -> int:
    """ExecStart= of seamless-ram.service: take the RAM, serve it as /dev/nbdN until stopped.

    On a stop while an upgrade is armed (the kexec shutdown) the pages stay in
    the hugetlb pool, untouched until the new kernel names them; on any other
    stop they are given back.
    """
    req = state.read_json(REQUEST)
    # Threads inherit the mask: only sigwait below sees SIGTERM.
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM, signal.SIGINT})
    t0 = time.monotonic()
    _compact()
    size = int(req["bytes"])
    # Take up to as much again, and keep the pages that fill whole memory
    # blocks (fewer ranges, and RAM the new kernel can get back); never more
    # than 80 % of what is available.
    spare = max(0, min(size, procs.meminfo("MemAvailable") * 8 // 10 - size)) // PAGE * PAGE
    with hugemem.hugetlbfs(HUGE_DIR, PAGE) as directory:
        taken = hugemem.take(directory, size, PAGE, spare, lead=True)
        took = time.monotonic() - t0
        keep = False
        try:
            fd = os.open(taken.path, os.O_RDWR)
            mem = mmap.mmap(fd, taken.file_size, mmap.MAP_SHARED | hugemem.MAP_NORESERVE)
            device = nbd.Device(_free_nbd(), nbd.Store(mem, taken.page, taken.layout()))
            # The images hold the services' memory: the device is root's only,
            # not the disk group's (set again once udev has seen the connect).
            run(["udevadm", "settle", "--timeout=30"], check=False)
            os.chmod(device.path, 0o600)
            state.write_json(
                TAKEN,
                {
                    "device": device.path,
                    "page": taken.page,
                    "bytes": taken.size,
                    "addresses": taken.addresses,
                    "spare": spare,
                    "ranges": [[r.start, r.length] for r in taken.ranges],
                    "seconds": round(took, 3),
                    "pid": os.getpid(),
                },
            )
            log.info(
                "Took %d MiB of RAM in %d range(s) in %.2f s, serving it as %s",
                taken.size >> 20,
                len(taken.ranges),
                took,
                device.path,
            )
            systemd.notify("READY=1")
            signal.sigwait({signal.SIGTERM, signal.SIGINT})
            systemd.notify("STOPPING=1")
            keep = state.ARMED.exists()
            device.close()
            mem.close()
            os.close(fd)
        finally:
            if not keep:
                hugemem.give_back(taken)
                TAKEN.unlink(missing_ok=True)
    log.info("RAM %s", "kept for the new kernel" if keep else "given back")
    return 0


def mount_unit_path(mountpoint: Path) -> Path:
    return MOUNT_UNIT_DIR / systemd.mount_unit_name(str(mountpoint))


def take(size: int) -> dict[str, Any]:
    """Start seamless-ram.service for SIZE bytes; what it took (TAKEN's contents)."""
    state.write_json(REQUEST, {"bytes": size})
    TAKEN.unlink(missing_ok=True)
    try:
        run(["systemctl", "start", UNIT], timeout=600)
    except CommandError as e:
        why = _last_error()
        raise hugemem.RamError(f"could not take {size >> 20} MiB of RAM for the images: {why or e}") from e
    if not TAKEN.exists():
        raise hugemem.RamError(
            f"{UNIT} did not take the RAM for the images (its conditions failed: is seamless=off on "
            "the kernel command line, or /etc/seamless/disabled there?)"
        )
    data: dict[str, Any] = state.read_json(TAKEN)
    return data


def _last_error() -> str:
    """The last error line seamless-ram.service logged (its reason for failing)."""
    out = run(["journalctl", "-u", UNIT, "-n", "20", "-o", "cat", "--no-pager"], check=False).stdout
    lines = [x for x in out.splitlines() if x.strip()]
    for line in reversed(lines):
        if "Error" in line or "error" in line or "could" in line:
            return line.strip()
    return lines[-1].strip() if lines else ""


def mount(device: str, mountpoint: Path) -> None:
    """A fresh ext4 on DEVICE, mounted at MOUNTPOINT by a mount unit bound to seamless-ram.service.

    The unit orders the stops of the kexec shutdown: the checkpoint hooks
    (RequiresMountsFor=), then the unmount, then the server.
    """
    run(["mkfs.ext4", "-q", "-F", "-b", "4096", "-L", LABEL, "-O", "^has_journal", device])
    # udev watches block devices: closing mkfs's descriptor set the mode back to
    # the disk group's. Root only again, once udev is done with that event.
    run(["udevadm", "settle", "--timeout=30"], check=False)
    os.chmod(device, 0o600)
    unit = mount_unit_path(mountpoint)
    unit.parent.mkdir(parents=True, exist_ok=True)
    unit.write_text(
        "# Written by seamless-upgrade arm (RAM on demand); removed by disarm.\n"
        "[Unit]\n"
        "Description=Images of the armed seamless kernel upgrade (RAM taken on demand)\n"
        "Documentation=file:/usr/share/doc/seamless-systemd/ram-on-demand.md\n"
        f"BindsTo={UNIT}\nAfter={UNIT}\n"
        # Not part of local-fs.target: it comes and goes with the upgrade, and at the
        # shutdown local-fs.target stops after sysinit.target, which the server is
        # ordered after (a cycle that systemd broke by dropping the server's stop).
        "DefaultDependencies=no\nConflicts=umount.target\nBefore=umount.target\n"
        "[Mount]\n"
        f"What={device}\nWhere={mountpoint}\nType=ext4\nDirectoryMode=0700\n"
    )
    run(["systemctl", "daemon-reload"])
    run(["systemctl", "start", unit.name], timeout=120)
    os.chmod(mountpoint, 0o700)


def release(mountpoint: Path) -> None:
    """Unmount the images, stop the server (it gives the RAM back), remove the mount unit."""
    unit = mount_unit_path(mountpoint)
    if unit.exists():
        run(["systemctl", "stop", unit.name], check=False, timeout=120)
        unit.unlink()
        run(["systemctl", "daemon-reload"], check=False)
    run(["systemctl", "stop", UNIT], check=False, timeout=120)
    # A server that died while the upgrade was armed left its pages in the pool.
    if TAKEN.exists():
        data = state.read_json(TAKEN)
        pid = int(data.get("pid", 0))
        if not pid or not Path(f"/proc/{pid}").exists():
            hugemem.lower(int(data["page"]), int(data["bytes"]) // int(data["page"]))
            TAKEN.unlink()
    REQUEST.unlink(missing_ok=True)


def kexec_window(ranges: list[hugemem.Range]) -> hugemem.Range:
    return hugemem.kexec_window(ranges, hugemem.system_ram(Path("/proc/iomem").read_text()))


# ---------------------------------------------------------------- new boot


def _pmem_devices() -> dict[int, str]:
    """Base address -> pmemN, for every pmem device of this boot."""
    out = {}
    for res in Path("/sys/block").glob("pmem*/device/resource"):
        with contextlib.suppress(OSError, ValueError):
            out[int(res.read_text(), 16)] = res.parent.parent.name
    return out


def _give_one(dev: str, start: int, length: int, block: int) -> str | None:
    """Hand pmem device DEV back to the allocator; None, or why it stays a pmem device."""
    first = -(-(start + DEVDAX_HEAD) // block) * block
    if first + block > start + length:
        return f"smaller than a {block >> 20} MiB memory block after the devdax metadata"
    ns = Path(os.path.realpath(f"/sys/block/{dev}/device"))
    namespace, region = ns.name, ns.parent
    align = region / "align"
    # ndctl wants the region's size to be a multiple of its alignment (16 MiB by default).
    with contextlib.suppress(OSError, ValueError):
        if length % int(align.read_text(), 0):
            align.write_text(f"{PAGE:#x}\n")
    try:
        made = run(
            ["ndctl", "create-namespace", "-f", "-e", namespace, "-m", "devdax", "-M", "mem", "-a", "2M"],
            timeout=120,
        )
        chardev = json.loads(made.stdout)["daxregion"]["devices"][0]["chardev"]
        run(["daxctl", "reconfigure-device", "--mode=system-ram", chardev], timeout=120)
    except (CommandError, ValueError, KeyError, IndexError, TypeError) as e:
        # ndctl ends with a count ("reconfigured 0 devices"); the cause is in the lines before.
        text = (e.stderr or e.stdout) if isinstance(e, CommandError) else str(e)
        lines = [line.strip() for line in text.splitlines() if line.strip()]
        return "; ".join(lines[-4:]) or str(e)
    return None


def _holders() -> str:
    """Who keeps the images' device open: its kernel holders and the mount tables that name it."""
    found = []
    with contextlib.suppress(OSError):
        dm = DM_DEVICE.resolve().name
        found += [f"/sys/block/{dm}/holders/{h.name}" for h in Path(f"/sys/block/{dm}/holders").iterdir()]
        major_minor = Path(f"/sys/block/{dm}/dev").read_text().strip()
        namespaces = set()
        for info in Path("/proc").glob("[0-9]*/mountinfo"):
            with contextlib.suppress(OSError):
                ns = os.readlink(info.parent / "ns" / "mnt")
                if ns not in namespaces and f" {major_minor} " in info.read_text():
                    namespaces.add(ns)
                    pid = int(info.parent.name)
                    found.append(f"a mount in the namespace of PID {pid} ({procs.comm(pid)})")
    return ", ".join(found[:8]) or "nothing found"


def give_back(ranges: list[tuple[int, int]], mountpoint: Path) -> dict[str, Any]:
    """After the restores: unmount the images, drop the table, give each range to the allocator."""
    t0 = time.monotonic()
    before = procs.meminfo("MemTotal")
    out: dict[str, Any] = {"taken_bytes": sum(e - s for s, e in ranges), "ranges": len(ranges)}
    if pmem.is_mounted(mountpoint):
        proc = run(["umount", str(mountpoint)], check=False)
        if proc.returncode != 0:
            out.update(returned_bytes=0, reason=f"cannot unmount {mountpoint}: {proc.stderr.strip()}")
            log.warning("The images' RAM stays taken: %s", out["reason"])
            return out
    if DM_DEVICE.exists():
        # udev may still be probing the device (its coldplug in this boot): settle, then let
        # dmsetup retry while it is briefly open.
        with contextlib.suppress(CommandError):
            run(["udevadm", "settle", "--timeout=30"], check=False, timeout=60)
        try:
            run(["dmsetup", "remove", "--retry", DM_NAME], timeout=120)
        except CommandError as e:
            out.update(
                returned_bytes=0,
                reason=f"cannot remove /dev/mapper/{DM_NAME}: {str(e).strip()} (held by: {_holders()})",
            )
            log.warning("The images' RAM stays taken: %s", out["reason"])
            return out
    try:
        block = int(Path("/sys/devices/system/memory/block_size_bytes").read_text(), 16)
    except (OSError, ValueError):
        block = 128 << 20
    devices = _pmem_devices()
    kept = []
    for start, end in ranges:
        dev = devices.get(start)
        why = "no pmem device" if dev is None else _give_one(dev, start, end - start, block)
        if why:
            kept.append({"device": dev, "start": start, "bytes": end - start, "reason": why})
            log.info("RAM at %#x (%d MiB) stays %s: %s", start, (end - start) >> 20, dev, why)
    out.update(
        returned_bytes=max(0, procs.meminfo("MemTotal") - before),
        kept=kept,
        seconds=round(time.monotonic() - t0, 3),
    )
    log.info(
        "Gave %d MiB of the %d MiB the images used back to the kernel in %.1f s",
        out["returned_bytes"] >> 20,
        out["taken_bytes"] >> 20,
        out["seconds"],
    )
    return out


def this_boot_ranges() -> list[tuple[int, int]]:
    """The images' ranges this boot's command line names (empty unless RAM on demand)."""
    return kernels.ram_ranges(kernels.split_cmdline(Path("/proc/cmdline").read_text()))
