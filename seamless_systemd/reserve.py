"""`seamless-upgrade setup`: a memmap= reservation for the images, written the distribution's way.

RAM on demand (the default) needs none of this; a reservation is for the
machines that want the images' RAM set aside at boot, for good (a locked-down
kernel, a machine too fragmented to find 2 MiB pages when it arms). See
docs/setup.md for the rules the range picker follows and why.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import struct
from pathlib import Path

from seamless_systemd import config, kernels, state
from seamless_systemd.errors import SeamlessError
from seamless_systemd.hugemem import Resource, parse_iomem
from seamless_systemd.run import run

MIB = 1 << 20
GIB = 1 << 30
# Where the range starts and how its size is rounded: the memory block size of
# x86-64 (/sys/devices/system/memory/block_size_bytes on most machines), so the
# range is whole memory blocks.
ALIGN = 128 * MIB
# How far the range keeps from what the boot loader and kernel put in RAM.
GUARD = 128 * MIB
# x86-64 kernels advertise this initrd_addr_max; a boot loader puts the initramfs below it.
DEFAULT_INITRD_MAX = 0x7FFFFFFF

GRUB_FILE = Path("/etc/default/grub.d/seamless.cfg")
GRUB_CFG = Path("/boot/grub/grub.cfg")
KERNEL_CMDLINE = Path("/etc/kernel/cmdline")
RECORD = state.STATE_DIR / "setup.json"
PROC_CMDLINE = Path("/proc/cmdline")
IOMEM = Path("/proc/iomem")
BOOT_PARAMS = Path("/sys/kernel/boot_params/data")


@dataclasses.dataclass(frozen=True)
class BootParams:
    initrd_start: int
    initrd_size: int
    initrd_max: int  # the highest address the initramfs may end at


def parse_boot_params(blob: bytes) -> BootParams | None:
    """The initramfs this boot's loader placed, from /sys/kernel/boot_params/data (struct boot_params)."""
    if len(blob) < 0x230:
        return None

    def u32(offset: int) -> int:
        return int(struct.unpack_from("<I", blob, offset)[0])

    # setup_header: ramdisk_image, ramdisk_size, initrd_addr_max; boot_params: their high halves.
    low, size_low, addr_max = u32(0x218), u32(0x21C), u32(0x22C)
    high, size_high = u32(0xC0), u32(0xC4)
    return BootParams(low | high << 32, size_low | size_high << 32, addr_max or DEFAULT_INITRD_MAX)


def _subtract(ranges: list[tuple[int, int]], cut: tuple[int, int]) -> list[tuple[int, int]]:
    out = []
    for s, e in ranges:
        if cut[1] <= s or cut[0] >= e:
            out.append((s, e))
            continue
        if s < cut[0]:
            out.append((s, cut[0]))
        if cut[1] < e:
            out.append((cut[1], e))
    return out


def candidates(iomem: list[Resource], boot: BootParams | None) -> list[tuple[int, int]]:
    """Free stretches of RAM for the range, best first.

    Top-level System RAM, less (with GUARD around them) the kernel's own
    ranges, a crash kernel, and the initramfs the boot loader placed. Then:
    above 4 GiB first, then above the initramfs limit (where no boot loader
    puts one), then the rest; the highest first within each.
    """
    free = [(r.start, r.end) for r in iomem if r.depth == 0 and r.name == "System RAM"]
    avoid = [
        (r.start, r.end)
        for r in iomem
        if r.name.startswith("Kernel ") or r.name == "Crash kernel" or r.name.startswith("Persistent Memory")
    ]
    limit = boot.initrd_max if boot else DEFAULT_INITRD_MAX
    if boot and boot.initrd_size:
        avoid.append((boot.initrd_start, boot.initrd_start + boot.initrd_size))
    for s, e in avoid:
        free = _subtract(free, (max(0, s - GUARD), e + GUARD))

    def rank(r: tuple[int, int]) -> tuple[int, int]:
        tier = 0 if r[0] >= 4 * GIB else 1 if r[0] > limit else 2
        return (tier, -r[1])

    # A stretch that straddles a boundary is split there, so each part ranks on its own.
    split: list[tuple[int, int]] = []
    for s, e in free:
        for b in (limit + 1, 4 * GIB):
            if s < b < e:
                split.append((s, b))
                s = b
        split.append((s, e))
    return sorted(split, key=rank)


def pick(iomem: list[Resource], boot: BootParams | None, size: int) -> int:
    """The start of a SIZE range, or SeamlessError saying why there is none."""
    size = -(-size // ALIGN) * ALIGN
    biggest = 0
    for s, e in candidates(iomem, boot):
        top = e // ALIGN * ALIGN
        start = top - size
        if start >= -(-s // ALIGN) * ALIGN:
            return start
        biggest = max(biggest, top - -(-s // ALIGN) * ALIGN)
    raise SeamlessError(
        f"no free stretch of RAM holds {human(size)} (the largest, kept {human(GUARD)} away from "
        f"the kernel and the initramfs and aligned to {human(ALIGN)}, is {human(max(0, biggest))}): "
        "ask for less with --size, or use RAM on demand (pmem.mode: auto), which needs no reservation"
    )


def human(n: int) -> str:
    return f"{n // GIB}G" if n % GIB == 0 and n else f"{n // MIB}M"


def word(start: int, size: int) -> str:
    return f"memmap={human(size)}!{human(start) if start % MIB == 0 else hex(start)}"


def existing(cmdline: str) -> list[str]:
    """The memmap=SIZE!OFFSET words of CMDLINE that reserve persistent memory for good.

    Not the memmap= our RAM on demand names after seamless.ram= (a boot after
    such an upgrade has it; it is given back, see kernels.without_ours).
    """
    words = kernels.without_ours(kernels.split_cmdline(cmdline))
    return [w for w in words if w.startswith("memmap=") and kernels.memmap_reservations([w])]


@dataclasses.dataclass(frozen=True)
class Way:
    """How this machine's kernel command line is kept."""

    name: str  # grub, grubby, kernel-cmdline
    where: str  # what a sysadmin would look at


def way(root: Path = Path("/")) -> Way:
    """GRUB, grubby or /etc/kernel/cmdline: whichever ROOT's boot reads."""

    def found(cmd: str) -> bool:
        return shutil.which(cmd, path="/usr/sbin:/usr/bin:/sbin:/bin") is not None

    if found("grubby") and (root / "boot/loader/entries").is_dir():
        return Way("grubby", "the boot entries in /boot/loader/entries (grubby)")
    if found("update-grub") and (root / GRUB_CFG.relative_to("/")).exists():
        return Way("grub", f"{GRUB_FILE}, then update-grub")
    if (root / KERNEL_CMDLINE.relative_to("/")).exists():
        return Way("kernel-cmdline", f"{KERNEL_CMDLINE} (kernel-install)")
    raise SeamlessError(
        "this machine's kernel command line is not kept in a way 'setup' knows (no GRUB with "
        f"{GRUB_CFG} and update-grub, no grubby with /boot/loader/entries, no {KERNEL_CMDLINE})"
    )


def _grub_text(w: str) -> str:
    return (
        "# Written by 'seamless-upgrade setup': RAM kept out of the kernel's hands at every boot,\n"
        "# for the images of a seamless kernel upgrade (/dev/pmem0). 'seamless-upgrade setup\n"
        "# --remove' takes it out again; the RAM comes back at the next reboot.\n"
        f'GRUB_CMDLINE_LINUX="$GRUB_CMDLINE_LINUX {w}"\n'
    )


def write(w: str, how: Way) -> None:
    if how.name == "grub":
        GRUB_FILE.parent.mkdir(parents=True, exist_ok=True)
        tmp = GRUB_FILE.with_name(GRUB_FILE.name + ".tmp")
        tmp.write_text(_grub_text(w))
        os.replace(tmp, GRUB_FILE)
        run(["update-grub"])
    elif how.name == "grubby":
        run(["grubby", "--update-kernel=ALL", f"--args={w}"])
    else:
        words = KERNEL_CMDLINE.read_text().split()
        KERNEL_CMDLINE.write_text(" ".join([*words, w]) + "\n")
    state.write_json(RECORD, {"word": w, "way": how.name})


def setup(size_text: str, dry_run: bool = False) -> int:
    size = config.parse_size(size_text)
    if not size:
        raise SeamlessError(f"--size {size_text!r}: give a size such as 512M or 2G")
    cmdline = PROC_CMDLINE.read_text()
    record = state.read_json(RECORD) if RECORD.exists() else None
    if record:
        when = "active" if record["word"] in cmdline.split() else "from the next boot on"
        raise SeamlessError(
            f"already set up: {record['word']} ({when}); 'seamless-upgrade setup --remove' first to change it"
        )
    if existing(cmdline):
        raise SeamlessError(
            f"this boot already reserves {' '.join(existing(cmdline))} on its command line: that "
            "reservation serves the upgrade as it is (pmem.mode: auto uses /dev/pmem0); take it "
            "off the kernel command line first to have 'setup' choose one"
        )
    iomem = parse_iomem(IOMEM.read_text())
    if not any(r.start for r in iomem):
        raise SeamlessError("/proc/iomem shows no addresses (they are zero to anyone but root): run as root")
    boot = parse_boot_params(BOOT_PARAMS.read_bytes()) if BOOT_PARAMS.exists() else None
    rounded = -(-size // ALIGN) * ALIGN
    start = pick(iomem, boot, rounded)
    w = word(start, rounded)
    how = way()
    print(f"Range:   {w}: {human(rounded)} at {start:#x}-{start + rounded - 1:#x}")
    print(f"Written: {how.where}" if not dry_run else f"Would write: {how.where}")
    if dry_run:
        return 0
    write(w, how)
    print(
        f"Reboot once (an ordinary reboot) for /dev/pmem0 to appear; until 'seamless-upgrade setup "
        f"--remove' this machine gives {human(rounded)} of RAM to it at every boot."
    )
    print("Then 'seamless-upgrade plan' says \"memmap= reservation kept on the new kernel's command line\".")
    return 0


def remove() -> int:
    record = state.read_json(RECORD) if RECORD.exists() else None
    if not record:
        if GRUB_FILE.exists():
            record = {"word": "", "way": "grub"}
        else:
            print("Nothing to remove: 'seamless-upgrade setup' wrote no reservation here.")
            return 0
    w, how = record["word"], record["way"]
    if how == "grub":
        GRUB_FILE.unlink(missing_ok=True)
        run(["update-grub"])
    elif how == "grubby":
        run(["grubby", "--update-kernel=ALL", f"--remove-args={w}"])
    elif KERNEL_CMDLINE.exists():
        KERNEL_CMDLINE.write_text(" ".join(x for x in KERNEL_CMDLINE.read_text().split() if x != w) + "\n")
    RECORD.unlink(missing_ok=True)
    active = w and w in PROC_CMDLINE.read_text().split()
    print(
        f"Removed {w or GRUB_FILE}"
        + (
            ": the RAM comes back at the next reboot (a kexec keeps this boot's command line)."
            if active
            else "."
        )
    )
    return 0
