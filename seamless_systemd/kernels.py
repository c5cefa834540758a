"""Installed kernels, the target of an upgrade, and the new kernel command line."""

from __future__ import annotations

import dataclasses
import re
import struct
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


# What the target kernel must have for the images to come back and the
# services to be restored: (option, its module when built as one, what breaks).
# x86's memmap=SIZE!OFFSET ranges reach the NVDIMM drivers through nd_e820.
NEEDED_OPTIONS: tuple[tuple[str, str | None, str], ...] = (
    ("CONFIG_CHECKPOINT_RESTORE", None, "CRIU cannot restore the services on it"),
    ("CONFIG_LIBNVDIMM", "libnvdimm", "the images' memory never becomes a /dev/pmemN device"),
    ("CONFIG_X86_PMEM_LEGACY", "nd_e820", "the memmap=SIZE!OFFSET range is not handed to the PMEM driver"),
    ("CONFIG_BLK_DEV_PMEM", "nd_pmem", "the images' memory never becomes a /dev/pmemN device"),
    ("CONFIG_EXT4_FS", "ext4", "the images' ext4 file system cannot be mounted"),
)
# RAM on demand also lays the images' ranges end to end with device-mapper.
ON_DEMAND_OPTIONS: tuple[tuple[str, str | None, str], ...] = (
    ("CONFIG_BLK_DEV_DM", "dm_mod", "the images' ranges cannot be joined into one device (dm-linear)"),
)
# Without these the upgrade works, with less: (option, what is lost).
WANTED_OPTIONS: tuple[tuple[str, str], ...] = (
    (
        "CONFIG_MEM_SOFT_DIRTY",
        "the next upgrade from it cannot pre-dump (the whole memory is dumped in the freeze)",
    ),
)
_BZIMAGE_MAGIC = b"HdrS"


def read_config(
    version: str, boot: Path = Path("/boot"), modules: Path = Path("/lib/modules")
) -> dict[str, str] | None:
    """The build options of kernel VERSION (/boot/config-VERSION, or its modules' config); None if none."""
    for path in (boot / f"config-{version}", modules / version / "config"):
        try:
            text = path.read_text(errors="replace")
        except OSError:
            continue
        pairs = (ln.split("=", 1) for ln in text.splitlines() if ln.startswith("CONFIG_") and "=" in ln)
        return {k: v.strip() for k, v in pairs}
    return None


def module_name(path: str) -> str | None:
    """The module a path names (kernel/drivers/nvdimm/nd_pmem.ko.xz -> nd_pmem), or None."""
    base = path.rsplit("/", 1)[-1]
    if ".ko" not in base:
        return None
    name, _, rest = base.partition(".ko")
    return name.replace("-", "_") if rest in ("", ".xz", ".zst", ".gz") else None


def modules_of(version: str, modules: Path = Path("/lib/modules")) -> frozenset[str] | None:
    """The modules installed for kernel VERSION (from its modules.dep); None if that cannot be read."""
    try:
        text = (modules / version / "modules.dep").read_text(errors="replace")
    except OSError:
        return None
    names = (module_name(line.split(":", 1)[0]) for line in text.splitlines() if ":" in line)
    return frozenset(n for n in names if n)


def image_problem(image: Path, machine: str) -> str | None:
    """Why kexec cannot load IMAGE (an x86 bzImage's boot header and length), or None if it looks whole."""
    if machine not in ("x86_64", "i686", "i386"):
        return None  # other architectures' image formats are left to kexec itself
    try:
        with image.open("rb") as f:
            head = f.read(0x240)
        size = image.stat().st_size
    except OSError as e:
        return f"cannot read the kernel image {image}: {e.strerror or e}"
    how = "reinstall the kernel's package (Debian: apt install --reinstall linux-image-VERSION)"
    if head[:4] == b"\x7fELF":
        return None
    if len(head) < 0x206 or head[0x202:0x206] != _BZIMAGE_MAGIC:
        return f"{image} is not a kernel image kexec can load (no x86 boot header): it is damaged; {how}"
    setup_sectors = head[0x1F1] or 4
    need = (setup_sectors + 1) * 512 + struct.unpack_from("<I", head, 0x1F4)[0] * 16
    if size < need:
        return f"{image} is cut short ({size} of its {need} bytes): it is damaged; {how}"
    return None


def config_problems(
    version: str,
    config: dict[str, str] | None,
    modules: frozenset[str] | None,
    initrd_modules: frozenset[str] | None,
    *,
    on_demand: bool,
    machine: str,
    in_ram: bool = True,
) -> tuple[list[str], list[str]]:
    """(problems, notes) of kernel VERSION as the upgrade's target, from its build options and modules.

    A module the images need at boot must be installed and in the initramfs
    (INITRD_MODULES, None: not known), where the images are mounted.
    """
    if config is None:
        return [], [
            f"cannot tell whether kernel {version} has what the restore needs (no /boot/config-{version}): "
            "it is assumed to be built like the running one"
        ]
    needed = NEEDED_OPTIONS + (ON_DEMAND_OPTIONS if on_demand else ())
    if not in_ram:  # pmem.mode: disk, the images on the root file system
        needed = tuple(n for n in needed if n[0] == "CONFIG_CHECKPOINT_RESTORE")
    problems: list[str] = []
    for option, module, why in needed:
        if option == "CONFIG_X86_PMEM_LEGACY" and machine != "x86_64":
            continue
        value = config.get(option)
        if value not in ("y", "m"):
            problems.append(
                f"kernel {version} is built without {option}, so {why}: choose a kernel that has it "
                "('seamless-upgrade plan --kernel VERSION')"
            )
        elif value == "m" and module and modules is not None and module not in modules:
            problems.append(
                f"kernel {version} has {option} as module {module}, which is not installed in "
                f"/lib/modules/{version}, so {why}: reinstall the kernel's package"
            )
        elif value == "m" and module and initrd_modules is not None and module not in initrd_modules:
            problems.append(
                f"the initramfs of {version} lacks module {module} ({option}), so {why} at boot: "
                f"run 'update-initramfs -u -k {version}' (dracut: 'dracut --force --kver {version}')"
            )
    notes = [
        f"kernel {version} is built without {o}: {lost}" for o, lost in WANTED_OPTIONS if config.get(o) != "y"
    ]
    return problems, notes
