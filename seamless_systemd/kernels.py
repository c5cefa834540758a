"""Installed kernels, the target of an upgrade, and the new kernel command line."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

from seamless_systemd.errors import SeamlessError

# Parameters this package owns on the kernel command line.
RESTORE_PARAM = "seamless.restore"
DEVICE_PARAM = "seamless.pmem"
MOUNT_PARAM = "seamless.mount"
PIDFLOOR_PARAM = "seamless.pidfloor"
# RAM on demand: "seamless.ram=on-demand memmap=LEN!ADDR,..." ends the new
# kernel's line; that memmap= word (right after this one) names the ranges
# that hold the images, and is ours too (docs/ram-on-demand.md).
RAM_PARAM = "seamless.ram"
OWN_PARAMS = (RESTORE_PARAM, DEVICE_PARAM, MOUNT_PARAM, PIDFLOOR_PARAM, RAM_PARAM)
# Set by the boot loader for the running kernel; meaningless for kexec.
_DROP_PARAMS = ("BOOT_IMAGE", "initrd")


@dataclasses.dataclass(frozen=True)
class Kernel:
    version: str
    image: Path
    initrd: Path | None


def version_key(version: str) -> tuple[tuple[int, int | str], ...]:
    """Sort key for kernel versions: numbers compare as numbers (6.1.0-53 > 6.1.0-47)."""
    parts: list[tuple[int, int | str]] = []
    for piece in re.findall(r"\d+|[A-Za-z]+", version):
        parts.append((1, int(piece)) if piece.isdigit() else (0, piece))
    return tuple(parts)


def installed(boot: Path = Path("/boot"), modules: Path = Path("/lib/modules")) -> list[Kernel]:
    """Kernels with an image in BOOT and modules in MODULES, oldest first."""
    found = []
    for image in boot.glob("vmlinuz-*"):
        version = image.name.removeprefix("vmlinuz-")
        if not (modules / version).is_dir():
            continue
        initrd = None
        for name in (f"initrd.img-{version}", f"initramfs-{version}.img"):
            if (boot / name).exists():
                initrd = boot / name
                break
        found.append(Kernel(version, image, initrd))
    return sorted(found, key=lambda k: version_key(k.version))


def choose(kernels: list[Kernel], wanted: str | None) -> Kernel:
    """The kernel named WANTED, or the newest installed one."""
    if not kernels:
        raise SeamlessError("no installed kernel found in /boot (vmlinuz-VERSION with /lib/modules/VERSION)")
    if wanted is None:
        return kernels[-1]
    for k in kernels:
        if k.version == wanted:
            return k
    have = ", ".join(k.version for k in kernels)
    raise SeamlessError(f"kernel {wanted} is not installed (installed: {have})")


def split_cmdline(cmdline: str) -> list[str]:
    """Split a kernel command line into words, keeping double-quoted values together."""
    return re.findall(r'(?:[^\s"]+|"[^"]*")+', cmdline)


def param_values(words: list[str], name: str) -> list[str]:
    return [w.split("=", 1)[1] if "=" in w else "" for w in words if w.split("=", 1)[0] == name]


def without_ours(words: list[str]) -> list[str]:
    """WORDS without seamless parameters and the memmap= word that follows seamless.ram=."""
    out: list[str] = []
    after_ram = False
    for w in words:
        name = w.split("=", 1)[0]
        if after_ram and name == "memmap":
            after_ram = False
            continue
        after_ram = name == RAM_PARAM
        if name not in OWN_PARAMS:
            out.append(w)
    return out


def ram_ranges(words: list[str]) -> list[tuple[int, int]]:
    """(start, end exclusive) of the ranges the seamless.ram= memmap= word names (empty if none)."""
    for i, w in enumerate(words[:-1]):
        if w.split("=", 1)[0] == RAM_PARAM and words[i + 1].startswith("memmap="):
            return memmap_reservations(words[i + 1 : i + 2])
    return []


def new_cmdline(current: str, extra: dict[str, str], memmap: str = "") -> str:
    """CURRENT without boot-loader and seamless parameters, plus EXTRA (then MEMMAP, the RAM's word)."""
    words = [w for w in without_ours(split_cmdline(current)) if w.split("=", 1)[0] not in _DROP_PARAMS]
    words += [f"{k}={v}" for k, v in extra.items()]
    if memmap:
        words += [f"{RAM_PARAM}=on-demand", memmap]
    return " ".join(words)


_SIZE_RE = re.compile(r"^(\d+)([KMGTkmgt]?)$")
_MULT = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}


def _size(text: str) -> int:
    if text.lower().startswith("0x"):
        return int(text, 16)
    m = _SIZE_RE.match(text)
    if not m:
        raise ValueError(text)
    return int(m.group(1)) * _MULT[m.group(2).lower()]


def memmap_reservations(words: list[str]) -> list[tuple[int, int]]:
    """(start, end exclusive) of every memmap=SIZE!OFFSET persistent-memory reservation."""
    out = []
    for value in param_values(words, "memmap"):
        for item in value.split(","):
            if "!" not in item:
                continue
            size, _, offset = item.partition("!")
            try:
                start = _size(offset)
                out.append((start, start + _size(size)))
            except ValueError:
                continue
    return out
