"""Configuration: /etc/seamless/config.yaml plus /etc/seamless/conf.d/*.yaml.

Fragments are read in this order: the main file, then the conf.d files sorted
by name. Lists (``units``) are concatenated, mappings merged key by key, and a
scalar in a later fragment overrides an earlier one. Unknown keys, wrong types
and bad unit names are errors that name the file, the key and what is allowed.
"""

from __future__ import annotations

import dataclasses
import enum
import re
from pathlib import Path
from typing import Any

from seamless_systemd.errors import ConfigError

DEFAULT_DIR = Path("/etc/seamless")
DEFAULT_DEVICE = Path("/dev/pmem0")
DEFAULT_MOUNTPOINT = Path("/run/seamless/pmem")
# pmem.mode: disk keeps the images here and binds it to the mount point; the
# new boot's initramfs binds it again (it has the root file system only).
DISK_IMAGES = Path("/var/lib/seamless/images")

# Allowed keys, with the type each must have.
_TOP: dict[str, type | tuple[type, ...]] = {
    "units": list,
    "containers": list,
    "on_unsupported": str,
    "pmem": dict,
    "kernel": (str, type(None)),
    "checkpoint_timeout": int,
    "restore_timeout": int,
    "panic_reboot": int,
    "images": dict,
    "warm": dict,
    "lazy_restore": bool,
    "early_writeback": bool,
}
_IMAGES: dict[str, type | tuple[type, ...]] = {"checksum": str, "pre_dump": bool}
# How the images are checked at the restore: crc32 catches a flipped bit (the
# damage a range of RAM can come back with) at ~15x sha256's speed under
# emulation (docs/benchmarks.md); sha256 is the slower, cryptographic choice.
CHECKSUMS = ("crc32", "sha256")
_PMEM: dict[str, type | tuple[type, ...]] = {"device": str, "mode": str, "size": (str, int)}
_UNIT: dict[str, type | tuple[type, ...]] = {"name": str, "on_unsupported": str, "warm_paths": list}
# What the new boot reads before it is needed (see warm).
_WARM: dict[str, type | tuple[type, ...]] = {
    "page_cache": bool,
    "page_cache_early": bool,
    "dentries": bool,
    "huge_pages": bool,
}


class PmemMode(enum.StrEnum):
    """Where the images live (docs/ram-on-demand.md)."""

    AUTO = "auto"  # reserved when pmem.device is a memmap= reservation, else on-demand
    RESERVED = "reserved"  # a memmap=SIZE!OFFSET range reserved at boot, for good
    ON_DEMAND = "on-demand"  # RAM taken at arm time, named to the new kernel only, given back
    DISK = "disk"  # no RAM at all: the images in DISK_IMAGES, on the root file system (docs/disk-images.md)


_SIZE_RE = re.compile(r"^([1-9][0-9]*)([MG])$")


def parse_size(text: str | int) -> int | None:
    """'512M' / '2G' -> bytes; None if TEXT is not such a size."""
    m = _SIZE_RE.match(str(text))
    if not m:
        return None
    return int(m.group(1)) << (20 if m.group(2) == "M" else 30)


class OnUnsupported(enum.StrEnum):
    """What to do with a unit whose state CRIU cannot keep (found by `plan`)."""

    REFUSE = "refuse"  # refuse the whole upgrade
    RESTART = "restart"  # upgrade anyway; the unit stops normally and starts afresh


_UNIT_RE = re.compile(r"^[A-Za-z0-9:_.\\-]+(@[A-Za-z0-9:_.\\-]+)?\.service$")
_SUFFIXES = (".service", ".socket", ".target", ".mount", ".timer", ".path", ".scope", ".slice")


@dataclasses.dataclass(frozen=True)
class Config:
    units: tuple[str, ...] = ()
    # podman containers, by name (each run by a service; see podman.py).
    containers: tuple[str, ...] = ()
    on_unsupported: OnUnsupported = OnUnsupported.REFUSE
    # Per-unit (and per-container) choices that differ from on_unsupported.
    unit_on_unsupported: tuple[tuple[str, OnUnsupported], ...] = ()
    pmem_device: Path = DEFAULT_DEVICE
    # Fixed: the initramfs mounts it there and the checkpoint hook orders itself
    # against that mount (RequiresMountsFor= in seamless-checkpoint@.service).
    pmem_mountpoint: Path = DEFAULT_MOUNTPOINT
    pmem_mode: PmemMode = PmemMode.AUTO
    # on-demand: take at least this much RAM (room for the services to grow
    # between arm and the kexec); the plan's estimate otherwise.
    pmem_size: int = 0
    kernel: str | None = None
    checkpoint_timeout: int = 120
    # One unit's restore in the new boot; past it systemd stops the restore and
    # the unit starts afresh. Not the unit's own TimeoutStartSec=, which is
    # meant for a cold start and is 90 s by default.
    restore_timeout: int = 600
    # panic=SECONDS on the new kernel's command line when it has no panic= of
    # its own: a new kernel that panics reboots instead of waiting at the
    # message (the kernel's default, 0). 0 here: the command line as it is.
    panic_reboot: int = 30
    image_checksum: str = "crc32"
    # Copy the memory while the services run (at arm time), see predump.
    pre_dump: bool = True
    # The page cache the trees had, read back after the kexec; the paths their
    # images name, looked up before CRIU needs them (see warm).
    warm_page_cache: bool = True
    # Read it back while the units are restored, not once they all are: the
    # services find their files warm when they answer again, and the reads
    # compete with the restores for the CPUs and the disk (docs/benchmarks.md).
    warm_page_cache_early: bool = False
    warm_dentries: bool = True
    # The restored trees' memory collapsed into huge pages again (see hugepages).
    # Off by default until the benchmark has measured it on and off (docs/benchmarks.md).
    warm_huge_pages: bool = False
    # The restored trees' private memory served from the images as it is touched
    # (criu lazy-pages): the service answers before its memory is all back.
    # Off by default until the benchmark and the VM tests say (docs/lazy-restore.md).
    lazy_restore: bool = False
    # seamless-upgrade run writes the dirty page cache back (sync) while the
    # services still run, so that the shutdown's own sync, in the downtime, has
    # little left; off: only the shutdown's.
    early_writeback: bool = True
    # Per unit: more files (or directories) whose page cache is kept warm.
    unit_warm_paths: tuple[tuple[str, tuple[str, ...]], ...] = ()
    sources: tuple[Path, ...] = ()

    def policy(self, unit: str) -> OnUnsupported:
        return dict(self.unit_on_unsupported).get(unit, self.on_unsupported)

    def warm_paths(self, unit: str) -> tuple[str, ...]:
        return dict(self.unit_warm_paths).get(unit, ())


def check_unit_name(name: str) -> str | None:
    """Return why NAME cannot be a preserved unit, or None if it can."""
    if not name:
        return "empty unit name"
    if len(name) > 255:
        return f"unit name {name!r} is longer than 255 characters"
    if not name.endswith(_SUFFIXES):
        return f"unit name {name!r} has no type suffix; did you mean '{name}.service'?"
    if not name.endswith(".service"):
        return f"{name!r} is not a service; only .service units can be preserved"
    if name.endswith("@.service"):
        return f"{name!r} is a template; name an instance, e.g. '{name[:-9]}@NAME.service'"
    if not _UNIT_RE.match(name):
        return f"unit name {name!r} has characters systemd does not allow (escape them with systemd-escape)"
    return None


_CONTAINER_RE = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_.-]*$")


def check_container_name(name: str) -> str | None:
    """Return why NAME cannot be a podman container name, or None if it can."""
    if not _CONTAINER_RE.match(name) or len(name) > 253:
        return (
            f"container name {name!r} is not a podman container name (letters, digits, '_', '.', '-'; "
            "'podman ps -a --format {{.Names}}' lists them)"
        )
    if name.endswith(_SUFFIXES):
        return f"{name!r} is a unit name; list units under 'units:', containers by name under 'containers:'"
    return None


def _type_name(t: type | tuple[type, ...]) -> str:
    types = t if isinstance(t, tuple) else (t,)
    names = {
        list: "a list",
        dict: "a mapping",
        str: "a string",
        int: "an integer",
        type(None): "null",
        bool: "true or false",
    }
    return " or ".join(names.get(x, x.__name__) for x in types)


def _check_keys(
    data: dict[str, Any], schema: dict[str, type | tuple[type, ...]], path: Path, prefix: str
) -> None:
    for key, value in data.items():
        if key not in schema:
            allowed = ", ".join(sorted(prefix + k for k in schema))
            raise ConfigError(f"{path}: unknown key '{prefix}{key}' (allowed: {allowed})")
        want = schema[key]
        # bool is an int subclass; a yes/no where a number belongs is a mistake.
        if (isinstance(value, bool) and want is not bool) or not isinstance(value, want):
            raise ConfigError(f"{path}: '{prefix}{key}' must be {_type_name(want)}, not {value!r}")


def _check_policy(value: str, path: Path, key: str) -> None:
    allowed = [p.value for p in OnUnsupported]
    if value not in allowed:
        raise ConfigError(f"{path}: '{key}' must be one of {', '.join(allowed)}, not {value!r}")


def _read_fragment(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text()
    except OSError as e:
        raise ConfigError(f"{path}: cannot read: {e.strerror}") from e
    # Here, not at the top: a restore imports this module but reads no YAML, and
    # under emulation importing yaml took 0.2 s of each restore's Python start.
    import yaml

    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from e
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping (e.g. 'units: [foo.service]')")
    _check_keys(data, _TOP, path, "")
    if "pmem" in data:
        _check_keys(data["pmem"], _PMEM, path, "pmem.")
        mode = data["pmem"].get("mode")
        if mode is not None and mode not in [m.value for m in PmemMode]:
            allowed = ", ".join(m.value for m in PmemMode)
            raise ConfigError(f"{path}: 'pmem.mode' must be one of {allowed}, not {mode!r}")
        size = data["pmem"].get("size")
        if size is not None and parse_size(size) is None:
            raise ConfigError(
                f"{path}: 'pmem.size' must be a size in MiB or GiB such as 512M or 2G, not {size!r}"
            )
    if "images" in data:
        _check_keys(data["images"], _IMAGES, path, "images.")
        checksum = data["images"].get("checksum")
        if checksum is not None and checksum not in CHECKSUMS:
            raise ConfigError(
                f"{path}: 'images.checksum' must be one of {', '.join(CHECKSUMS)}, not {checksum!r}"
            )
    if "warm" in data:
        _check_keys(data["warm"], _WARM, path, "warm.")
    if "on_unsupported" in data:
        _check_policy(data["on_unsupported"], path, "on_unsupported")
    for key, what, check in (
        ("units", "unit name", check_unit_name),
        ("containers", "container name", check_container_name),
    ):
        for i, entry in enumerate(data.get(key, [])):
            if isinstance(entry, dict):
                _check_keys(entry, _UNIT, path, f"{key}[{i}].")
                if "name" not in entry:
                    raise ConfigError(f"{path}: {key}[{i}] needs a 'name' (the {what})")
                if "on_unsupported" in entry:
                    _check_policy(entry["on_unsupported"], path, f"{key}[{i}].on_unsupported")
                for j, warm_path in enumerate(entry.get("warm_paths", [])):
                    if not isinstance(warm_path, str) or not warm_path.startswith("/"):
                        raise ConfigError(
                            f"{path}: {key}[{i}].warm_paths[{j}] must be an absolute path "
                            f"(a file or a directory), not {warm_path!r}"
                        )
                entry = entry["name"]
            elif not isinstance(entry, str):
                raise ConfigError(
                    f"{path}: {key}[{i}] must be a {what} or a mapping with 'name', not {entry!r}"
                )
            why = check(entry)
            if why:
                raise ConfigError(f"{path}: {key}[{i}]: {why}")
    for key in ("checkpoint_timeout", "restore_timeout"):
        timeout = data.get(key)
        if timeout is not None and timeout <= 0:
            raise ConfigError(f"{path}: '{key}' must be a positive number of seconds")
    panic = data.get("panic_reboot")
    if panic is not None and panic < 0:
        raise ConfigError(
            f"{path}: 'panic_reboot' must be a number of seconds (0: leave the new kernel's panic= as it is)"
        )
    return data


def load(config_dir: Path = DEFAULT_DIR) -> Config:
    """Load and validate the configuration below CONFIG_DIR."""
    main = config_dir / "config.yaml"
    paths = [main] if main.exists() else []
    conf_d = config_dir / "conf.d"
    if conf_d.is_dir():
        paths += sorted(p for p in conf_d.iterdir() if p.suffix in (".yaml", ".yml"))
    units: list[str] = []
    containers: list[str] = []
    policies: dict[str, OnUnsupported] = {}
    default_policy = OnUnsupported.REFUSE
    pmem: dict[str, Any] = {}
    kernel: str | None = None
    timeout = Config.checkpoint_timeout
    restore_timeout = Config.restore_timeout
    panic_reboot = Config.panic_reboot
    lazy_restore = Config.lazy_restore
    early_writeback = Config.early_writeback
    images: dict[str, Any] = {}
    warm: dict[str, Any] = {}
    warm_paths: dict[str, list[str]] = {}
    for path in paths:
        data = _read_fragment(path)
        for key, names in (("units", units), ("containers", containers)):
            for entry in data.get(key, []):
                if isinstance(entry, dict):
                    if "on_unsupported" in entry:
                        policies[entry["name"]] = OnUnsupported(entry["on_unsupported"])
                    more = warm_paths.setdefault(entry["name"], [])
                    more += [p for p in entry.get("warm_paths", []) if p not in more]
                    entry = entry["name"]
                if entry not in names:
                    names.append(entry)
        if "on_unsupported" in data:
            default_policy = OnUnsupported(data["on_unsupported"])
        pmem.update(data.get("pmem", {}))
        if "kernel" in data:
            kernel = data["kernel"]
        timeout = data.get("checkpoint_timeout", timeout)
        restore_timeout = data.get("restore_timeout", restore_timeout)
        panic_reboot = data.get("panic_reboot", panic_reboot)
        lazy_restore = data.get("lazy_restore", lazy_restore)
        early_writeback = data.get("early_writeback", early_writeback)
        images.update(data.get("images", {}))
        warm.update(data.get("warm", {}))
    device = Path(pmem.get("device", str(DEFAULT_DEVICE)))
    where = paths[-1] if paths else main
    if not device.is_absolute() or not str(device).startswith("/dev/"):
        raise ConfigError(f"{where}: 'pmem.device' must be a device path under /dev, not '{device}'")
    return Config(
        units=tuple(units),
        containers=tuple(containers),
        on_unsupported=default_policy,
        unit_on_unsupported=tuple(sorted(policies.items())),
        pmem_device=device,
        pmem_mode=PmemMode(pmem.get("mode", PmemMode.AUTO.value)),
        pmem_size=parse_size(pmem["size"]) or 0 if "size" in pmem else 0,
        kernel=kernel,
        checkpoint_timeout=timeout,
        restore_timeout=restore_timeout,
        panic_reboot=panic_reboot,
        lazy_restore=lazy_restore,
        early_writeback=early_writeback,
        image_checksum=images.get("checksum", Config.image_checksum),
        pre_dump=images.get("pre_dump", Config.pre_dump),
        warm_page_cache=warm.get("page_cache", Config.warm_page_cache),
        warm_page_cache_early=warm.get("page_cache_early", Config.warm_page_cache_early),
        warm_dentries=warm.get("dentries", Config.warm_dentries),
        warm_huge_pages=warm.get("huge_pages", Config.warm_huge_pages),
        unit_warm_paths=tuple(sorted((u, tuple(ps)) for u, ps in warm_paths.items() if ps)),
        sources=tuple(paths),
    )
