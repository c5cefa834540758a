"""Before the kexec: plan, arm, run, and the per-unit checkpoint at shutdown."""

from __future__ import annotations

import concurrent.futures
import dataclasses
import errno
import fcntl
import os
import shutil
import stat
import struct
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from seamless_systemd import (
    config,
    criu,
    diskimages,
    guard,
    hugemem,
    imagesums,
    inflight,
    initrd,
    journal,
    kernels,
    openfiles,
    pmem,
    podman,
    predump,
    procs,
    progress,
    ram,
    sandbox,
    sockets,
    state,
    systemd,
    volatile,
    warm,
)
from seamless_systemd.config import Config, OnUnsupported, PmemMode
from seamless_systemd.errors import CheckpointError, CommandError, LockedError, PreflightError, SeamlessError
from seamless_systemd.log import log
from seamless_systemd.run import run

# Room for processes forked between arming and the checkpoint, so that the
# new boot's PIDs (all above the floor) never meet a restored one.
PID_MARGIN = 10000
# Makes the PMEM devices root-only (packaging/files/udev).
PMEM_UDEV_RULE = "/lib/udev/rules.d/60-seamless-pmem.rules"
# What CRIU writes besides the memory, per process (core, mm, page map, files,
# its log): in the VM a one-process service of 101 MiB made 100.7 MiB of images.
IMAGE_OVERHEAD = 256 << 10


def image_estimate(facts: criu.TreeFacts) -> int:
    """What CRIU writes for a tree: its memory and IMAGE_OVERHEAD per process."""
    return facts.memory_bytes + IMAGE_OVERHEAD * len(facts.pids)


# The room the images' file system must have beyond the estimate: its own
# metadata, and a service that grows between plan and the final dump.
def images_room(estimate: int) -> int:
    return estimate + estimate // 10 + (16 << 20)


@dataclasses.dataclass(frozen=True)
class UnitPlan:
    unit: str
    main_pid: int
    pids: tuple[int, ...]
    memory_bytes: int
    estimate_bytes: int
    problem: str | None
    # Type=oneshot: no process to checkpoint; it simply runs again at boot.
    stateless: bool = False
    # Why the unit is restarted afresh instead of preserved (on_unsupported: restart).
    restart: str | None = None
    # The podman container the unit runs (its MainPID is the container's conmon):
    # checkpointed and restored through podman; PIDS is empty, the container's
    # processes get new host PIDs anyway.
    container: str = ""
    # Kept, but not quite the same afterwards (e.g. a listening socket whose file is gone).
    warnings: tuple[str, ...] = ()

    @property
    def preserved(self) -> bool:
        return not self.stateless and self.restart is None


@dataclasses.dataclass(frozen=True)
class Plan:
    kernel_from: str
    kernel_to: kernels.Kernel
    cmdline: str
    units: tuple[UnitPlan, ...]
    pmem_device: Path
    pmem_size: int | None
    pmem_capacity: int | None
    estimate_bytes: int
    memmap_kept: bool
    pid_floor: int
    problems: tuple[str, ...]
    notes: tuple[str, ...]
    # Where the images go: "reserved" (pmem_device) or "on-demand" (RAM_BYTES taken at arm time).
    mode: str = PmemMode.RESERVED.value
    ram_bytes: int | None = None
    ram_available: int | None = None
    # What the host offers now (on-demand): page sizes, free 2 MiB blocks, ranges the line can name.
    ram_host: dict[str, Any] | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "kernel": {
                "from": self.kernel_from,
                "to": self.kernel_to.version,
                "image": str(self.kernel_to.image),
                "initrd": str(self.kernel_to.initrd) if self.kernel_to.initrd else None,
            },
            "cmdline": self.cmdline,
            "units": [dataclasses.asdict(u) for u in self.units],
            "pmem": {
                "device": str(self.pmem_device),
                "size": self.pmem_size,
                "capacity": self.pmem_capacity,
                "estimate": self.estimate_bytes,
                "memmap_kept": self.memmap_kept,
                "mode": self.mode,
                "ram_bytes": self.ram_bytes,
                "ram_available": self.ram_available,
                "ram_host": self.ram_host,
            },
            "pid_floor": self.pid_floor,
            "problems": list(self.problems),
            "notes": list(self.notes),
        }


def _kexec_supported() -> str | None:
    if not Path("/sys/kernel/kexec_loaded").exists():
        return "the running kernel has no kexec support (/sys/kernel/kexec_loaded is missing)"
    if shutil.which("kexec") is None:
        return "kexec is not installed (Debian: apt install kexec-tools)"
    return None


@dataclasses.dataclass(frozen=True)
class HostFacts:
    """Everything the plan looks at, gathered in one place so decisions can be tested."""

    running_kernel: str
    target: kernels.Kernel
    initrd_has_hook: bool | None
    kexec_problem: str | None
    criu_installed: bool
    cmdline_words: tuple[str, ...]
    pmem_is_block_device: bool
    pmem_size: int | None
    pmem_capacity: int | None
    pmem_legacy_ranges: tuple[tuple[int, int], ...]
    last_pid: int
    # PIDs up to this were left to the kernel and initramfs in this boot (None:
    # our initramfs script did not run).
    pid_base: int | None
    units: tuple[UnitPlan, ...]
    # RAM on demand: what decides whether the RAM can be taken (None: not looked at).
    ram: ram.Facts | None = None
    # The PMEM device's permission bits (None: not a block device, or not looked at).
    pmem_mode: int | None = None
    # A package manager at work (the PID holding dpkg's lock), or None.
    package_manager_pid: int | None = None
    # The target kernel: why kexec cannot load its image (None: it looks whole),
    # its build options, its installed modules and those in its initramfs (None: not known).
    image_problem: str | None = None
    target_config: dict[str, str] | None = None
    target_modules: frozenset[str] | None = None
    initrd_modules: frozenset[str] | None = None
    machine: str = "x86_64"
    # The hardware watchdog and systemd's KExecWatchdogSec= (None: not looked at).
    watchdog: guard.Watchdog | None = None
    # pmem.mode: disk, where the images would go (None: not looked at).
    disk: diskimages.DiskFacts | None = None
    # CRIU can leave the pre-dump rounds' pages to a lazy restore (criu.LAZY_PARENT_PAGES).
    criu_lazy_parent: bool = False


def gather(cfg: Config, kernel: str | None = None, check_initrd: bool = True) -> HostFacts:
    target = kernels.choose(kernels.installed(), kernel or cfg.kernel)
    is_block = cfg.pmem_device.is_block_device()
    size = pmem.device_size(cfg.pmem_device) if is_block else None
    capacity = None
    if size is not None:
        # Old generations are removed when arming: count the whole file system.
        capacity = pmem.capacity_bytes(cfg.pmem_mountpoint) if pmem.is_mounted(cfg.pmem_mountpoint) else None
        capacity = capacity if capacity is not None else int(size * 0.95)
    listing = initrd.listing(target.initrd) if check_initrd and target.initrd else None
    return HostFacts(
        running_kernel=os.uname().release,
        target=target,
        initrd_has_hook=None if listing is None else any("seamless" in p for p in listing),
        kexec_problem=_kexec_supported(),
        criu_installed=shutil.which(criu.CRIU) is not None,
        criu_lazy_parent=bool(cfg.lazy_restore and criu.parent_options()),
        cmdline_words=tuple(kernels.split_cmdline(Path("/proc/cmdline").read_text())),
        pmem_is_block_device=is_block,
        pmem_size=size,
        pmem_capacity=capacity,
        pmem_legacy_ranges=pmem.device_ranges(cfg.pmem_device) if is_block else (),
        last_pid=int(Path("/proc/sys/kernel/ns_last_pid").read_text()),
        pid_base=_pid_base(),
        units=_plan_all(cfg),
        ram=ram.gather() if cfg.pmem_mode in (PmemMode.AUTO, PmemMode.ON_DEMAND) else None,
        disk=diskimages.facts() if cfg.pmem_mode == PmemMode.DISK else None,
        pmem_mode=stat.S_IMODE(cfg.pmem_device.stat().st_mode) if is_block else None,
        package_manager_pid=lock_holder(DPKG_LOCK),
        image_problem=kernels.image_problem(target.image, os.uname().machine),
        target_config=kernels.read_config(target.version),
        target_modules=kernels.modules_of(target.version),
        machine=os.uname().machine,
        watchdog=guard.watchdog_facts(),
        initrd_modules=None
        if listing is None
        else frozenset(filter(None, map(kernels.module_name, listing))),
    )


DPKG_LOCK = Path("/var/lib/dpkg/lock")
_FLOCK = "hhqqi4x"  # struct flock on x86-64 and arm64: type, whence, start, len, pid


def lock_holder(path: Path) -> int | None:
    """The PID holding a write lock (fcntl, as dpkg takes it) on PATH; None if none or no such file.

    Asked with F_GETLK: the lock is not taken, not even for a moment.
    """
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        query = struct.pack(_FLOCK, fcntl.F_WRLCK, os.SEEK_SET, 0, 0, 0)
        kind, _, _, _, pid = struct.unpack(_FLOCK, fcntl.fcntl(fd, fcntl.F_GETLK, query))
    except OSError:
        return None
    finally:
        os.close(fd)
    return pid if kind != fcntl.F_UNLCK and pid > 0 else None


def make_plan(cfg: Config, kernel: str | None = None, check_initrd: bool = True) -> Plan:
    return decide(cfg, gather(cfg, kernel, check_initrd))


def decide(cfg: Config, f: HostFacts) -> Plan:
    """What an upgrade would do on a host with facts F, and what stands in its way."""
    problems: list[str] = []
    notes: list[str] = []
    target = f.target
    if target.version == f.running_kernel:
        notes.append(
            f"the target kernel is the running one ({f.running_kernel}); the services are still "
            "checkpointed and restored across a kexec"
        )
    if target.initrd is None:
        problems.append(
            f"no initramfs for {target.version} in /boot; run 'update-initramfs -c -k {target.version}'"
        )
    elif f.initrd_has_hook is False:
        problems.append(
            f"{target.initrd} lacks the seamless-systemd hook that mounts the images at boot; "
            f"run 'update-initramfs -u -k {target.version}'"
        )
    if f.image_problem:
        problems.append(f.image_problem)
    if f.kexec_problem:
        problems.append(f.kexec_problem)
    if not f.criu_installed:
        problems.append("criu is not installed (Debian: apt install criu)")
    if f.package_manager_pid is not None:
        problems.append(
            f"a package manager is at work (PID {f.package_manager_pid} holds {DPKG_LOCK}): the kernel, its "
            "initramfs or seamless-systemd itself may be half installed; run again once it has finished"
        )
    if not cfg.units and not cfg.containers:
        problems.append(
            "nothing to preserve: list units under 'units:' (or podman containers under 'containers:') "
            "in /etc/seamless/config.yaml"
        )

    # The PMEM device, and whether the new kernel keeps it reserved (our own
    # RAM-on-demand ranges of the last upgrade do not count: see kernels.RAM_PARAM).
    reserved = kernels.memmap_reservations(kernels.without_ours(list(f.cmdline_words)))
    ranges = f.pmem_legacy_ranges
    memmap_kept = (
        f.pmem_is_block_device
        and bool(ranges)
        and all(any(s <= lo and hi <= e for s, e in reserved) for lo, hi in ranges)
    )
    mode = cfg.pmem_mode
    if mode == PmemMode.AUTO:
        mode = PmemMode.RESERVED if memmap_kept else PmemMode.ON_DEMAND
    estimate = sum(u.estimate_bytes for u in f.units)
    # The new kernel's command line before the upgrade's own words.
    cmdline = guard.with_panic(kernels.new_cmdline(" ".join(f.cmdline_words), {}), cfg.panic_reboot)
    ram_bytes = ram_available = None
    ram_host = None
    if mode == PmemMode.RESERVED:
        if not f.pmem_is_block_device:
            problems.append(f"{cfg.pmem_device} does not exist: {pmem.HOW_TO_RESERVE}")
        elif not memmap_kept:
            problems.append(
                f"{cfg.pmem_device} is not a memmap=SIZE!OFFSET reservation on the kernel command line, "
                "so the new kernel would hand its contents to the memory allocator: " + pmem.HOW_TO_RESERVE
            )
        if f.pmem_mode is not None and f.pmem_mode & 0o077:
            problems.append(
                f"{cfg.pmem_device} can be read by others than root (mode {f.pmem_mode:04o}), and it will "
                f"hold the services' memory: the package's udev rule ({PMEM_UDEV_RULE}) makes it root's "
                f"only at boot; run 'udevadm trigger {cfg.pmem_device}' (or 'chmod 0600 {cfg.pmem_device}')"
            )
        if f.pmem_capacity is not None and images_room(estimate) > f.pmem_capacity:
            problems.append(
                f"the images need about {estimate >> 20} MiB ({images_room(estimate) >> 20} MiB with room "
                f"to grow) but {cfg.pmem_device} holds {f.pmem_capacity >> 20} MiB: reserve more memory "
                "with memmap="
            )
    elif mode == PmemMode.DISK:
        if f.disk is None:
            problems.append(f"pmem.mode: disk: {config.DISK_IMAGES} was not looked at")
        else:
            problems += diskimages.problems(images_room(estimate), f.disk)
    else:
        ram_bytes = ram.needed_bytes(estimate, cfg.pmem_size)
        if f.ram is None:
            problems.append("RAM on demand: the host's memory was not looked at")
        else:
            ram_available = f.ram.mem_available
            longest = kernels.new_cmdline(cmdline, _restore_params(cfg, mode, "X" * 22, 10**9))
            ram_host = {
                "page_sizes": list(f.ram.page_sizes),
                "free_2m_blocks": f.ram.free_blocks,
                "max_ranges": ram.max_ranges(longest),
                "lockdown": f.ram.lockdown,
            }
            p, n = ram.judge(f.ram, ram_bytes, longest)
            problems += p
            notes += n

    kp, kn = kernels.config_problems(
        target.version,
        f.target_config,
        f.target_modules,
        f.initrd_modules,
        on_demand=mode == PmemMode.ON_DEMAND,
        machine=f.machine,
        in_ram=mode != PmemMode.DISK,
    )
    problems += kp
    notes += kn
    if cfg.lazy_restore and cfg.pre_dump and not f.criu_lazy_parent:
        notes.append(
            "lazy_restore with pre-dump rounds (images.pre_dump): this CRIU has no "
            f"{criu.LAZY_PARENT_PAGES}, so only the memory written since the last round is restored "
            "lazily; it restores what the rounds hold before the services run (build CRIU with "
            "packaging/criu/0002-lazy-parent-pages.patch, or set images.pre_dump: false for a wholly lazy "
            "restore and a longer freeze; docs/lazy-restore.md)"
        )
    if cfg.lazy_restore and f.target_config is not None and f.target_config.get("CONFIG_USERFAULTFD") != "y":
        notes.append(
            f"kernel {target.version} is built without CONFIG_USERFAULTFD: the restore will not be lazy "
            "(lazy_restore), all the memory is restored before the services answer"
        )
    problems += [u.problem for u in f.units if u.problem]
    notes += [f"{u.unit} will be restarted afresh, not preserved: {u.restart}" for u in f.units if u.restart]
    notes += [w for u in f.units if u.preserved and not u.problem for w in u.warnings]
    max_pid = max((p for u in f.units if u.preserved for p in u.pids), default=0)
    floor = max(max_pid, f.last_pid) + PID_MARGIN
    # The new boot's kernel and initramfs use PIDs below its base (at least
    # PID_BASE, see the initramfs script); the preserved trees' PIDs must be above.
    kept_free = max(f.pid_base or 0, PID_BASE)
    for up in f.units:
        low = [p for p in up.pids if p <= kept_free] if up.preserved else []
        if low:
            how = (
                f"restart {up.unit} before the upgrade so that it gets PIDs above {kept_free}"
                if f.pid_base
                else "this boot ran without the seamless-systemd initramfs script that keeps them "
                "free (reboot once with the package installed), then restart it"
            )
            problems.append(
                f"{up.unit}: PIDs {low} are in the range the kernel and initramfs use at boot (up to "
                f"{kept_free}); {how}"
            )
    if f.watchdog is not None:
        notes += guard.notes(cmdline, f.watchdog)
    disk = mode == PmemMode.DISK and f.disk is not None
    return Plan(
        f.running_kernel,
        target,
        cmdline,
        f.units,
        config.DISK_IMAGES if disk else cfg.pmem_device,
        None if disk else f.pmem_size,
        f.disk.free if disk and f.disk is not None else f.pmem_capacity,
        estimate,
        memmap_kept,
        floor,
        tuple(problems),
        tuple(notes),
        mode.value,
        ram_bytes,
        ram_available,
        ram_host,
    )


def _restore_params(cfg: Config, mode: PmemMode, generation: str, pid_floor: int) -> dict[str, str]:
    """The seamless.* words of the new kernel's command line (the memmap= word comes after)."""
    device = {PmemMode.ON_DEMAND: str(ram.DM_DEVICE), PmemMode.DISK: str(config.DISK_IMAGES)}.get(
        mode, str(cfg.pmem_device)
    )
    return {
        kernels.RESTORE_PARAM: generation,
        kernels.DEVICE_PARAM: device,
        kernels.MOUNT_PARAM: str(cfg.pmem_mountpoint),
        kernels.PIDFLOOR_PARAM: str(pid_floor),
    }


# The pre-dump rounds' checksums, made at arm time (imagesums.note_rounds).
ROUND_SUMS = "rounds-checksums.json"

# Must match initrd/seamless-pid-base.
PID_BASE = 4096


def _pid_base() -> int | None:
    try:
        return int((state.RUN_DIR / "pid-base").read_text())
    except (OSError, ValueError):
        return None


def _plan_all(cfg: Config) -> tuple[UnitPlan, ...]:
    """The configured units, then the services that run the configured containers."""
    out = []
    for u in cfg.units:
        progress.step("inspect", f"Looking at {u}", u)
        out.append(_plan_unit(u, cfg.policy(u)))
    seen = set(cfg.units)
    for name in cfg.containers:
        try:
            unit, why = podman.carrier(name)
        except SeamlessError as e:
            unit, why = "", f"container {name}: {e}"
        if why:
            out.append(UnitPlan(f"container {name}", 0, (), 0, 0, why))
        elif unit not in seen:
            seen.add(unit)
            progress.step("inspect", f"Looking at {unit} (container {name})", unit)
            out.append(_plan_unit(unit, cfg.policy(name)))
    return tuple(out)


def _plan_unit(unit: str, policy: OnUnsupported = OnUnsupported.REFUSE) -> UnitPlan:
    try:
        info = systemd.unit_info(unit)
    except SeamlessError as e:
        return UnitPlan(unit, 0, (), 0, 0, f"{unit}: {e}")
    if info.load_state != "loaded":
        return UnitPlan(unit, 0, (), 0, 0, f"{unit}: no such unit (load state {info.load_state})")
    if info.service_type == "oneshot":
        return UnitPlan(unit, 0, (), 0, 0, None, stateless=True)
    try:
        ctr = podman.of_unit(info.main_pid)
    except SeamlessError as e:
        return UnitPlan(unit, info.main_pid, (), 0, 0, f"{unit}: {e}")
    if ctr is not None:
        return _plan_container(unit, info.main_pid, ctr, policy)
    try:
        facts = criu.inspect(info)
    except CheckpointError as e:  # its message names the unit
        return UnitPlan(unit, info.main_pid, (), 0, 0, str(e))
    estimate = image_estimate(facts)
    up = _judged(unit, facts.main_pid, facts.pids, facts.memory_bytes, estimate, facts.unsupported, policy)
    return dataclasses.replace(up, warnings=facts.warnings)


def _plan_container(unit: str, main_pid: int, ctr: podman.Container, policy: OnUnsupported) -> UnitPlan:
    mem = podman.memory_bytes(ctr)
    problems = [f"{unit} {p}" for p in podman.problems(ctr)]
    return _judged(unit, main_pid, (), mem, mem + IMAGE_OVERHEAD, problems, policy, ctr.name)


def _judged(
    unit: str,
    main_pid: int,
    pids: tuple[int, ...],
    mem: int,
    estimate: int,
    unsupported: tuple[str, ...] | list[str],
    policy: OnUnsupported,
    container: str = "",
) -> UnitPlan:
    """UNIT's plan: preserved, or, with what cannot be kept, restarted or refused by POLICY."""
    if not unsupported:
        return UnitPlan(unit, main_pid, pids, mem, estimate, None, container=container)
    why = "; ".join(unsupported)
    if policy == OnUnsupported.RESTART:
        return UnitPlan(unit, main_pid, pids, mem, 0, None, restart=why, container=container)
    why += f" (with 'on_unsupported: restart' for {container or unit} it would be restarted afresh instead)"
    return UnitPlan(unit, main_pid, pids, mem, 0, why, container=container)


@contextmanager
def lock() -> Iterator[None]:
    state.RUN_DIR.mkdir(parents=True, exist_ok=True)
    fd = os.open(state.RUN_DIR / "lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as e:
            raise LockedError("another seamless-upgrade is running (lock /run/seamless/lock)") from e
        yield
    finally:
        os.close(fd)


def arm(cfg: Config, kernel: str | None = None, trial: bool = True) -> state.Generation:
    """Prepare everything so that the next kexec shutdown preserves the units.

    Nothing here stops a service. Any failure disarms again and leaves the
    machine as it was.
    """
    started = criu.now()
    progress.step("plan", "Checking what the upgrade would do")
    plan = make_plan(cfg, kernel)
    if plan.problems:
        _refused(plan.kernel_to.version, "; ".join(plan.problems))
        raise PreflightError(list(plan.problems))
    mode = PmemMode(plan.mode)
    gen = state.Generation(cfg.pmem_mountpoint, state.new_generation())
    params = _restore_params(cfg, mode, gen.id, plan.pid_floor)
    ranges: list[hugemem.Range] = []
    ram_record: dict[str, Any] | None = None
    try:
        if mode == PmemMode.ON_DEMAND:
            if ram.REQUEST.exists() or ram.mount_unit_path(cfg.pmem_mountpoint).exists():
                # Armed already: that upgrade's RAM and images make way for this one's.
                log.info("Replacing the upgrade armed before")
                disarm(quiet=True)
            ranges, ram_record = _take_ram(cfg, plan, kernels.new_cmdline(plan.cmdline, params))
        elif mode == PmemMode.DISK:
            diskimages.prepare(cfg.pmem_mountpoint)
        else:
            pmem.prepare(cfg.pmem_device, cfg.pmem_mountpoint)
        _clean_old_generations(cfg.pmem_mountpoint)
        pre_dump = trial and cfg.pre_dump and predump.supported()
        if trial:
            _trial_dumps(cfg, gen, plan, pre_dump)
        cmdline = kernels.new_cmdline(plan.cmdline, params, hugemem.memmap_arg(ranges) if ranges else "")
        if ram_record is not None:
            ram_record["cmdline_bytes"] = len(cmdline)
        state.write_json(
            gen.manifest,
            {
                "generation": gen.id,
                "kernel": {"from": plan.kernel_from, "to": plan.kernel_to.version},
                "cmdline": cmdline,
                "units": [u.unit for u in plan.units],
                "containers": {u.unit: u.container for u in plan.units if u.container},
                "stateless": [u.unit for u in plan.units if u.stateless],
                "restart": {u.unit: u.restart for u in plan.units if u.restart},
                "pid_floor": plan.pid_floor,
                "main_pids": {u.unit: u.main_pid for u in plan.units},
                "arm_started_at": started,
                "armed_at": criu.now(),
                "checkpoint_timeout": cfg.checkpoint_timeout,
                "restore_timeout": cfg.restore_timeout,
                "checksum": cfg.image_checksum,
                "pre_dump": pre_dump,
                # The private memory served as it is touched (criu lazy-pages), see restore.
                "lazy_restore": cfg.lazy_restore,
                # What the new boot reads before it is needed (see warm).
                "warm": {
                    "page_cache": cfg.warm_page_cache,
                    "page_cache_early": cfg.warm_page_cache_early,
                    "dentries": cfg.warm_dentries,
                    "huge_pages": cfg.warm_huge_pages,
                    "paths": {u.unit: list(cfg.warm_paths(u.unit)) for u in plan.units},
                },
                "pmem_mode": mode.value,
                "ram": ram_record,
            },
        )
        progress.step("kexec-load", f"Loading kernel {plan.kernel_to.version} with kexec")
        _kexec_load(plan.kernel_to, cmdline, ram.kexec_window(ranges) if ranges else None)
        units = [u.unit for u in plan.units]
        state.write_json(
            state.ARMED,
            {
                "generation": gen.id,
                "mount": str(cfg.pmem_mountpoint),
                "units": units,
                "pmem_mode": mode.value,
            },
        )
        if _order_hooks_after_containers(plan) | _quiet_stops(plan):
            systemd.daemon_reload()
        for up in plan.units:
            if up.preserved:
                systemd.start_unit(hook_unit(up.unit), wait=30)
    except BaseException as e:
        disarm(quiet=True)
        shutil.rmtree(gen.dir, ignore_errors=True)
        if isinstance(e, SeamlessError):
            _refused(plan.kernel_to.version, str(e))
        raise
    if ram_record is not None:
        log.info(
            "The images' RAM: %d MiB in %d range(s), taken in %.1f s",
            ram_record["bytes"] >> 20,
            len(ranges),
            ram_record["seconds"]["take"],
        )
    progress.step("armed", f"Armed upgrade {gen.id}")
    journal.event(
        journal.ARMED,
        f"Armed upgrade {gen.id}: {plan.kernel_from} -> {plan.kernel_to.version}, "
        f"the next kexec preserves {', '.join(units) or 'no unit'}",
        generation=gen.id,
        kernel_from=plan.kernel_from,
        kernel_to=plan.kernel_to.version,
        units=" ".join(units),
        pmem_mode=mode.value,
        arm_sec=round(criu.now() - started, 3),
    )
    return gen


def _refused(kernel_to: str, reason: str) -> None:
    """The journal's word on a refused arm; the caller's error says it on the terminal."""
    journal.event(
        journal.REFUSED,
        f"Upgrade to {kernel_to} refused, nothing was changed: {reason}",
        journal.WARNING,
        echo=False,
        kernel_to=kernel_to,
        reason=reason,
    )


def _take_ram(cfg: Config, plan: Plan, cmdline: str) -> tuple[list[hugemem.Range], dict[str, Any]]:
    """RAM on demand: take the pages, check the new command line can name them, mount the images there."""
    assert plan.ram_bytes is not None
    t0 = time.monotonic()
    progress.step("ram", f"Taking {plan.ram_bytes >> 20} MiB of RAM for the images")
    taken = ram.take(plan.ram_bytes)
    t1 = time.monotonic()
    ranges = [hugemem.Range(s, n) for s, n in taken["ranges"]]
    room = ram.max_ranges(cmdline)
    if len(ranges) > room:
        raise PreflightError(
            [
                f"the {taken['bytes'] >> 20} MiB of RAM for the images came in {len(ranges)} ranges, "
                f"and the new kernel's command line has room to name {room}: memory is too fragmented now. "
                "Try again later or after 'echo 1 > /proc/sys/vm/compact_memory'; for a guarantee, boot "
                "with movablecore=SIZE (memory the kernel keeps for movable pages, which compaction can "
                "always turn into 2 MiB pages; hugetlb_cma= serves 1 GiB pages only) or reserve the RAM for "
                "good (pmem.mode: reserved)"
            ]
        )
    ram.mount(taken["device"], cfg.pmem_mountpoint)
    record = {
        "mode": PmemMode.ON_DEMAND.value,
        "bytes": taken["bytes"],
        "page": taken["page"],
        "ranges": taken["ranges"],
        "device": taken["device"],
        "seconds": {"take": round(t1 - t0, 3), "mkfs_mount": round(time.monotonic() - t1, 3)},
    }
    return ranges, record


HOOK_DROPIN_DIR = Path("/run/systemd/system")


def _hook_container_dropin(unit: str) -> Path:
    return HOOK_DROPIN_DIR / f"{hook_unit(unit)}.d" / "50-seamless-container.conf"


def _quiet_stop_dropin(unit: str) -> Path:
    return HOOK_DROPIN_DIR / f"{unit}.d" / "50-seamless-checkpoint.conf"


QUIET_STOP = """\
# Written by seamless-upgrade arm, removed by disarm. At the kexec the checkpoint
# ends this unit's tree with SIGKILL once its images are written: the end of a
# clean stop, not a crash, so no failed state, no OnFailure=, no Restart=.
[Service]
SuccessExitStatus=SIGKILL
RestartPreventExitStatus=SIGKILL
"""


def _quiet_stops(plan: Plan) -> bool:
    """The preserved units' SIGKILL by the checkpoint is a clean stop to systemd (a runtime drop-in each)."""
    wrote = False
    for up in plan.units:
        if up.preserved and not up.container:
            path = _quiet_stop_dropin(up.unit)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(QUIET_STOP)
            wrote = True
    return wrote


def _order_hooks_after_containers(plan: Plan) -> bool:
    """Order each container's hook so that it dumps before anything the dump needs stops.

    The container's processes live in their own scope, which the shutdown stops
    independently of the unit; podman and runc talk to systemd over D-Bus.
    """
    wrote = False
    for up in plan.units:
        if not up.container or not up.preserved:
            continue
        ctr = podman.inspect(up.container)
        scope = podman.unit_of_pid(ctr.pid) if ctr else ""
        after = " ".join(x for x in (scope, "dbus.service", "dbus.socket") if x and x != up.unit)
        path = _hook_container_dropin(up.unit)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(
            f"# Written by seamless-upgrade arm: {up.unit} runs podman container {up.container}.\n"
            f"[Unit]\nAfter={after}\n"
        )
        wrote = True
    return wrote


def _clean_old_generations(mount: Path) -> None:
    """Remove the generations of earlier upgrades: their room is this one's.

    What cannot be removed is left with a warning (the room check before each
    dump still stands), never a reason to refuse the upgrade.
    """
    for entry in mount.iterdir():
        if entry.is_dir() and (entry / "manifest.json").exists():
            log.debug("Removing old generation %s", entry.name)
            left = procs.unmount_below(entry)
            if left:
                log.warning("Detached mounts left in old generation %s: %s", entry.name, ", ".join(left))
            try:
                shutil.rmtree(entry)
            except OSError as e:
                log.warning("Could not remove all of old generation %s on %s: %s", entry.name, mount, e)


def _trial_dumps(cfg: Config, gen: state.Generation, plan: Plan, pre_dump: bool) -> None:
    """Dump every unit once while it keeps running: what fails here fails before the kexec.

    PRE_DUMP: keep each trial as round 0 of the pre-dump rounds (see predump).
    The units are dumped side by side, as many at a time as there are CPUs
    (each dump freezes only its own tree); every unit that fails is named.
    """
    units = [up for up in plan.units if up.preserved]
    if not units:
        return
    problems: list[str] = []
    with concurrent.futures.ThreadPoolExecutor(max_workers=min(len(units), os.cpu_count() or 1)) as pool:
        tried = {pool.submit(_trial_dump, cfg, gen, up, pre_dump): up.unit for up in units}
        for done in concurrent.futures.as_completed(tried):
            try:
                done.result()
            except CheckpointError as e:
                problems.append(f"{tried[done]}: trial checkpoint failed: {e}")
    if problems:
        raise PreflightError(sorted(problems))


def _trial_dump(cfg: Config, gen: state.Generation, up: UnitPlan, pre_dump: bool) -> None:
    """One unit's trial dump (see _trial_dumps); a CheckpointError says why it failed."""
    info = systemd.unit_info(up.unit)
    trial = gen.unit_dir(up.unit) / "trial"
    log_path = gen.unit_dir(up.unit) / "trial-dump.log"
    what = f"Trial checkpoint of {up.unit} (it keeps running)"
    try:
        with progress.growing("trial-dump", what, up.unit, gen.unit_dir(up.unit)):
            if up.container:
                ctr = podman.of_unit(info.main_pid)
                if ctr is None:
                    raise CheckpointError("its container stopped running")
                podman.checkpoint(
                    ctr,
                    trial / podman.ARCHIVE,
                    log_path,
                    leave_running=True,
                    timeout=cfg.checkpoint_timeout,
                    tcp=bool(podman.connections(ctr)),
                )
            elif pre_dump:
                # The trial is round 0 of the pre-dump (see predump): kept, with memory tracking.
                facts = criu.inspect(info)
                images = gen.images(up.unit)
                criu.dump(
                    facts,
                    images / f"{predump.ROUND_PREFIX}0",
                    log_path,
                    leave_running=True,
                    timeout=cfg.checkpoint_timeout,
                    track_mem=True,
                )
                record = predump.rounds(
                    facts.main_pid, facts.pids, images, gen.unit_dir(up.unit), cfg.checkpoint_timeout
                )
                state.write_json(gen.unit_dir(up.unit) / predump.RECORD, record)
                # Hashed now, while the service runs, not in the shutdown (imagesums).
                t0 = time.monotonic()
                rounds = [f"{predump.ROUND_PREFIX}{r['round']}" for r in record["rounds"]]
                noted = imagesums.note_rounds(images, rounds, cfg.image_checksum)
                state.write_json(gen.unit_dir(up.unit) / ROUND_SUMS, noted)
                log.info("%s: the rounds' checksums took %.1f s", up.unit, time.monotonic() - t0)
                log.info(
                    "%s: pre-dump rounds wrote %s MiB",
                    up.unit,
                    " + ".join(str(int(r["bytes"]) >> 20) for r in record["rounds"]),
                )
            else:
                criu.dump(
                    criu.inspect(info),
                    trial,
                    log_path,
                    leave_running=True,
                    timeout=cfg.checkpoint_timeout,
                )
    finally:
        shutil.rmtree(trial, ignore_errors=True)


def _kexec_load(kernel: kernels.Kernel, cmdline: str, window: hugemem.Range | None = None) -> None:
    argv = ["kexec", "--load", str(kernel.image), f"--command-line={cmdline}"]
    if kernel.initrd:
        argv.insert(3, f"--initrd={kernel.initrd}")
    if window is not None:
        # The new kernel, its initrd and purgatory are copied into place at
        # kexec -e: keep them off the images' RAM. kexec_file_load cannot.
        argv[3:3] = [f"--mem-min={window.start:#x}", f"--mem-max={window.end - 1:#x}"]
        try:
            run(argv)
        except CommandError as e:
            raise SeamlessError(
                f"kexec could not load {kernel.version} outside the images' RAM "
                f"({window.start:#x}-{window.end - 1:#x}): {e}"
            ) from e
        return
    try:
        run(argv)
    except CommandError as e:
        # Kernels in lockdown only take signed images through kexec_file_load.
        try:
            run([*argv[:1], "--kexec-file-syscall", *argv[1:]])
        except CommandError as e2:
            raise SeamlessError(
                f"kexec could not load kernel {kernel.version} ({kernel.image}): {e}; with kexec_file_load: "
                f"{e2}. Nothing was stopped. If the image or its initramfs is damaged, reinstall the "
                "kernel's package and run 'update-initramfs -u -k VERSION'"
            ) from e2


def hook_unit(unit: str) -> str:
    """The checkpoint hook instance for UNIT (the instance is the full unit name)."""
    return f"seamless-checkpoint@{unit}.service"


def kexec_loaded() -> bool:
    try:
        return Path("/sys/kernel/kexec_loaded").read_text().strip() == "1"
    except OSError:
        return False


def disarm(quiet: bool = False) -> None:
    armed = state.read_json(state.ARMED) if state.ARMED.exists() else None
    state.ARMED.unlink(missing_ok=True)
    if kexec_loaded():
        run(["kexec", "--unload"], check=False)
    unquieted = []
    if armed:
        for unit in armed.get("units", []):
            # With nothing armed any more, stopping the hook does nothing to UNIT.
            try:
                systemd.stop_unit(hook_unit(unit))
            except SeamlessError as e:
                log.debug("Could not stop seamless-checkpoint@%s: %s", unit, e)
            # The ordering it adds is harmless until the next daemon-reload.
            _hook_container_dropin(unit).unlink(missing_ok=True)
            if _quiet_stop_dropin(unit).exists():
                _quiet_stop_dropin(unit).unlink()
                unquieted.append(unit)
    if unquieted:
        # A SIGKILL of these units is a failure again from now on.
        try:
            systemd.daemon_reload()
        except SeamlessError as e:
            log.warning(
                "Could not reload systemd after removing the drop-ins of %s: %s", ", ".join(unquieted), e
            )
    if armed and armed.get("pmem_mode") == PmemMode.DISK.value:
        # The trial's and the pre-dump rounds' images hold the services' memory: off the disk.
        diskimages.remove(str(armed.get("generation")))
    # RAM on demand: the images' file system goes, the RAM is given back.
    mount = Path(armed["mount"]) if armed else config.DEFAULT_MOUNTPOINT
    if ram.REQUEST.exists() or ram.mount_unit_path(mount).exists():
        ram.release(mount)
    if not quiet:
        journal.event(
            journal.DISARMED,
            "Disarmed: the next shutdown is an ordinary one",
            generation=armed["generation"] if armed else None,
        )


def run_upgrade(cfg: Config, kernel: str | None = None) -> state.Generation:
    """Arm, then start systemd's kexec shutdown."""
    gen = arm(cfg, kernel)
    # Early writeback: the dirty page cache goes to disk while the services still
    # run, so that the sync in the shutdown, inside the downtime, has little left.
    writeback = None
    if cfg.early_writeback:
        t0 = time.monotonic()
        progress.step("writeback", "Writing back the dirty page cache while the services run")
        os.sync()
        writeback = round(time.monotonic() - t0, 3)
        log.info("Wrote back the dirty page cache in %.2f s", writeback)
    state.update_json(gen.manifest, kexec_requested_at=criu.now(), writeback_seconds=writeback)
    manifest = state.read_json(gen.manifest)
    progress.step("kexec", f"Starting kexec.target into {manifest['kernel']['to']}")
    journal.event(
        journal.KEXEC,
        f"Starting kexec.target into {manifest['kernel']['to']}; "
        "the units are checkpointed as systemd stops them",
        generation=gen.id,
        kernel_from=manifest["kernel"]["from"],
        kernel_to=manifest["kernel"]["to"],
        writeback_sec=writeback,
    )
    try:
        systemd.start_unit("kexec.target", "replace-irreversibly")
    except BaseException:
        disarm(quiet=True)
        raise
    return gen


def checkpoint(unit: str) -> int:
    """ExecStop= of seamless-checkpoint@UNIT: dump UNIT if this is an armed kexec shutdown.

    Always returns 0: a failed checkpoint must not hold up the shutdown; the
    unit then starts afresh after the kexec and the report says why.
    """
    if not state.ARMED.exists():
        log.debug("No upgrade armed; %s stops normally", unit)
        return 0
    armed = state.read_json(state.ARMED)
    gen = state.Generation(Path(armed["mount"]), armed["generation"])
    if not kexec_loaded():
        log.warning("Upgrade armed but no kexec kernel loaded; %s stops normally", unit)
        return 0
    try:
        kexec_shutdown = systemd.has_start_job("kexec.target")
    except SeamlessError as e:
        log.warning("Cannot tell whether this is a kexec shutdown (%s); %s stops normally", e, unit)
        return 0
    if not kexec_shutdown:
        log.info("Not a kexec shutdown; %s stops normally, the upgrade stays armed", unit)
        return 0
    manifest = state.read_json(gen.manifest)
    # On disk, before any dump: if the new kernel never gets to the restore, the next boot says so.
    inflight.begin(gen, manifest)
    record: dict[str, Any] = {"unit": unit, "started_at": criu.now()}
    try:
        info = systemd.unit_info(unit)
        if unit in manifest.get("containers", {}):
            _checkpoint_container(gen, unit, info, manifest, record)
            return 0
        facts = criu.inspect(info)
        # Numbers the kernel handed out since plan (a new shared mapping) may meet a segment's id.
        if facts.shmem_clashes:
            raise CheckpointError(facts.shmem_clashes[0])
        above = [p for p in facts.pids if p > manifest["pid_floor"]]
        if above:
            raise CheckpointError(
                f"PIDs {above} are above the PID floor {manifest['pid_floor']} the new kernel was loaded with"
            )
        record.update(
            main_pid=facts.main_pid,
            pids=list(facts.pids),
            journal_inodes=list(facts.journal_inodes),
            listen_sockets=[list(x) for x in facts.listen_sockets],
            tcp_established=criu.uses_tcp_established(facts),
            tcp_connections=[list(c) for c in facts.tcp_connections],
            mount_ns=facts.mount_ns,
            private_tmp=list(facts.private_tmp),
            outside_files=list(facts.outside_files),
            mounts=sandbox.snapshot(facts.main_pid, facts.skip_mounts) if facts.mount_ns else [],
            skipped_mounts=list(facts.skip_mounts),
            syslog_identifier=info.syslog_identifier,
            service_type=info.service_type,
            pid_file=info.pid_file,
            shell_job=facts.shell_job,
            dynamic_uid=info.dynamic_uid,
            socket_unit_inet=[list(x) for x in facts.socket_unit_inet],
            renamed_sockets=sockets.renamed_records(facts.main_pid, facts.renamed_sockets),
            # Made again before the restore, with their ids (see sysv).
            sysv_shm=list(facts.sysv_segments),
            # The new boot's generator lets these share their port with the restored copy.
            reuse_port_sockets=list(info.socket_units) if facts.socket_unit_inet else [],
        )
        parent = None
        if manifest.get("pre_dump"):
            parent = predump.parent_for(gen.unit_dir(unit), gen.images(unit), facts.pids)
        record["pre_dump_parent"] = parent
        # Refused before it writes a byte if it cannot fit, so that the units
        # dumping beside it keep the room. What is already there (pre-dump
        # rounds) counts as room: a whole dump removes it first, and a dump on
        # top of a round writes at least the pages the round does not hold.
        rounds = criu.tree_size(gen.images(unit)) if gen.images(unit).exists() else 0
        why = room_problem(gen.dir, image_estimate(facts), rounds)
        if why:
            raise CheckpointError(why)
        _note_warm(gen, unit, manifest.get("warm") or {}, facts.pids, record)
        # Regular files on persistent file systems it holds open: looked at again before the restore.
        open_files = openfiles.held(facts.pids)
        log.info("Checkpointing %s (PID %d, %d process(es))", unit, facts.main_pid, len(facts.pids))
        with volatile.Held(facts.volatile_files) as held:
            criu.dump(
                facts,
                gen.images(unit),
                gen.unit_dir(unit) / "dump.log",
                leave_running=False,
                timeout=manifest.get("checkpoint_timeout", 120),
                save=[(d, gen.private_tmp(unit) / str(i)) for i, d in enumerate(facts.private_tmp)],
                parent=parent,
            )
            record["dumped_at"] = criu.now()
            record["dump_stats"] = predump.dump_stats(gen.images(unit))
            # The tree is gone now: its tmpfs files hold their last contents,
            # and its other files are as the restore must find them.
            record["volatile_files"] = held.save(gen.volatile_files(unit))
            record["open_files"] = openfiles.identities(open_files)
        _seal(gen, unit, record)
    except (SeamlessError, OSError) as e:
        reason = str(e)
        if _out_of_room(gen, unit, e):
            reason += f"; the images' file system {gen.mount} ran out of room: {GREW_SINCE_PLAN}"
        # What the failed dump wrote would take room from the units still dumping.
        shutil.rmtree(gen.images(unit), ignore_errors=True)
        record.update(finished_at=criu.now(), outcome="checkpoint-failed", reason=reason)
        state.write_json(gen.dump_info(unit), record)
        journal.event(
            journal.CHECKPOINT,
            f"Checkpoint of {unit} failed, it will start afresh after the kexec: {reason}",
            journal.ERR,
            unit=unit,
            generation=gen.id,
            outcome="checkpoint-failed",
            reason=reason,
        )
    return 0


GREW_SINCE_PLAN = (
    "the services grew since 'seamless-upgrade plan' (reserve more memory, or set pmem.size, "
    "and run plan again)"
)


def room_problem(where: Path, need: int, held: int = 0) -> str | None:
    """Why images of NEED bytes cannot go to the file system of WHERE, which holds HELD bytes of them."""
    try:
        st = os.statvfs(where)
    except OSError:
        return None
    free = st.f_bavail * st.f_frsize + held
    if need <= free:
        return None
    return (
        f"its images would need about {need >> 20} MiB and the images' file system has room for "
        f"{free >> 20} MiB (free, and its pre-dump rounds): {GREW_SINCE_PLAN}"
    )


def _out_of_room(gen: state.Generation, unit: str, error: BaseException) -> bool:
    """Whether UNIT's dump failed because the images' file system is full."""
    if isinstance(error, OSError) and error.errno == errno.ENOSPC:
        return True
    try:
        tail = (gen.unit_dir(unit) / "dump.log").read_text(errors="replace")[-20000:]
    except OSError:
        tail = ""
    return "No space left on device" in tail or "No space left on device" in str(error)


def _note_warm(
    gen: state.Generation, unit: str, opts: dict[str, Any], pids: tuple[int, ...], record: dict[str, Any]
) -> None:
    """While the tree still runs: the files it uses, and which of their pages are in the page cache."""
    if not (opts.get("page_cache") or opts.get("dentries")):
        return
    refs = warm.files_of(pids)
    if opts.get("dentries"):
        record["paths"] = sorted({r.path for r in refs})
    if opts.get("page_cache"):
        more = warm.files_below((opts.get("paths") or {}).get(unit, []))
        try:
            record["page_cache"] = warm.record(refs + more, gen.page_cache(unit))
        except OSError as e:  # the restore does not need it
            log.warning("%s: its page cache is not noted (%s)", unit, e)


def _checkpoint_container(
    gen: state.Generation, unit: str, info: systemd.UnitInfo, manifest: dict[str, Any], record: dict[str, Any]
) -> None:
    ctr = podman.of_unit(info.main_pid)
    if ctr is None:
        raise CheckpointError(f"{unit} no longer runs a podman container (MainPID {info.main_pid})")
    record.update(
        kind="podman",
        container=ctr.name,
        container_id=ctr.id,
        main_pid=info.main_pid,
        pids=[],
        cidfile=podman.cidfile(list(info.exec_argv)),
        syslog_identifier=info.syslog_identifier,
        service_type=info.service_type,
        pid_file=info.pid_file,
    )
    conns = podman.connections(ctr)
    # The new boot holds their segments back (netlock) until the container is back.
    record.update(
        tcp_established=bool(conns), tcp_connections=[list(x) for x in podman.host_side(ctr, conns)]
    )
    log.info("Checkpointing container %s of %s (conmon PID %d)", ctr.name, unit, info.main_pid)
    podman.checkpoint(
        ctr,
        gen.images(unit) / podman.ARCHIVE,
        gen.unit_dir(unit) / "dump.log",
        leave_running=False,
        timeout=manifest.get("checkpoint_timeout", 120),
        tcp=bool(conns),
    )
    record["dumped_at"] = criu.now()
    _seal(gen, unit, record)


def _seal(gen: state.Generation, unit: str, record: dict[str, Any]) -> None:
    """Checksums, the dump record, then the COMPLETE marker: the images are usable."""
    record["image_bytes"] = criu.tree_size(gen.images(unit))
    t0 = time.monotonic()
    algorithm = state.read_json(gen.manifest).get("checksum", "crc32")
    criu.seal_modes(gen.images(unit))
    # The pre-dump rounds' pieces were hashed at arm time; only what changed since is read (imagesums).
    noted = gen.unit_dir(unit) / ROUND_SUMS
    known = state.read_json(noted) if noted.exists() else None
    sums = imagesums.sums(gen.images(unit), algorithm, known)
    hashed = sums.pop("hashed_bytes")
    state.write_json(gen.checksums(unit), sums)
    record["checksum"] = {
        "algorithm": algorithm,
        "seconds": round(time.monotonic() - t0, 3),
        "hashed_bytes": hashed,
    }
    record["finished_at"] = criu.now()
    record["outcome"] = "checkpointed"
    state.write_json(gen.dump_info(unit), record)
    state.write_json(gen.complete(unit), {"generation": gen.id})
    took = record["dumped_at"] - record["started_at"]
    frozen = (record.get("dump_stats") or {}).get("frozen_time_us")
    journal.event(
        journal.CHECKPOINT,
        f"Checkpointed {unit} in {took:.2f} s",
        unit=unit,
        generation=gen.id,
        outcome="checkpointed",
        main_pid=record.get("main_pid"),
        image_bytes=record["image_bytes"],
        checkpoint_sec=round(took, 3),
        frozen_sec=None if frozen is None else round(frozen / 1e6, 3),
    )


def pids_alive(pids: list[int]) -> list[int]:
    return [p for p in pids if (procs.PROC / str(p)).exists()]
