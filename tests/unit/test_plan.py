"""Plan decisions on made-up hosts: what is refused, with which reason."""

import dataclasses
from pathlib import Path

import pytest

from seamless_systemd import kernels, ram, upgrade
from seamless_systemd.config import Config, PmemMode
from seamless_systemd.errors import PreflightError
from seamless_systemd.upgrade import IMAGE_OVERHEAD, PID_MARGIN, HostFacts, UnitPlan, decide

A = "6.1.0-47-cloud-amd64"
B = "6.1.0-53-cloud-amd64"
MiB = 1 << 20
CFG = Config(units=("app.service",))
RESERVED = Config(units=("app.service",), pmem_mode=PmemMode.RESERVED)
GOOD_RAM = ram.Facts(
    page_sizes=(1 << 30, 2 * MiB), mem_available=2000 * MiB, free_blocks=800, lockdown="none", nbd_module=True
)


def facts(**changes: object) -> HostFacts:
    good = HostFacts(
        running_kernel=A,
        target=kernels.Kernel(B, Path(f"/boot/vmlinuz-{B}"), Path(f"/boot/initrd.img-{B}")),
        initrd_has_hook=True,
        kexec_problem=None,
        criu_installed=True,
        cmdline_words=("BOOT_IMAGE=/vmlinuz", "root=/dev/vda", "memmap=512M!1536M", "quiet"),
        pmem_is_block_device=True,
        pmem_size=512 * MiB,
        pmem_capacity=480 * MiB,
        pmem_legacy_ranges=((1536 * MiB, 2048 * MiB),),
        last_pid=5900,
        pid_base=4096,
        units=(UnitPlan("app.service", 5812, (5812, 5813), 40 * MiB, 52 * MiB, None),),
        target_config={o: "y" for o, _, _ in kernels.NEEDED_OPTIONS + kernels.ON_DEMAND_OPTIONS}
        | {o: "y" for o, _ in kernels.WANTED_OPTIONS},
    )
    return dataclasses.replace(good, **changes)  # type: ignore[arg-type]


def test_good_host_is_ready() -> None:
    plan = decide(CFG, facts())
    assert plan.problems == ()
    assert plan.memmap_kept
    assert plan.kernel_to.version == B
    # A new kernel that panics reboots (Debian's default would leave it at the message).
    assert plan.cmdline == "root=/dev/vda memmap=512M!1536M quiet panic=30"
    assert plan.pid_floor == 5900 + PID_MARGIN
    assert plan.estimate_bytes == 52 * MiB


def test_pid_floor_is_above_every_preserved_pid() -> None:
    units = (UnitPlan("app.service", 30000, (30000, 30001), MiB, MiB, None),)
    assert decide(CFG, facts(units=units, last_pid=400)).pid_floor == 30001 + PID_MARGIN


def only_problem(cfg: Config = CFG, **changes: object) -> str:
    plan = decide(cfg, facts(**changes))
    assert len(plan.problems) == 1, plan.problems
    return plan.problems[0]


def test_missing_pmem_says_how_to_reserve() -> None:
    no_pmem = {
        "pmem_is_block_device": False,
        "pmem_size": None,
        "pmem_capacity": None,
        "pmem_legacy_ranges": (),
    }
    p = only_problem(RESERVED, **no_pmem)
    assert "/dev/pmem0 does not exist" in p and "memmap=512M!1536M" in p and "update-grub" in p


def test_pmem_not_from_memmap_would_lose_images() -> None:
    p = only_problem(RESERVED, cmdline_words=("root=/dev/vda", "memmap=256M!1536M"))
    assert "not a memmap=SIZE!OFFSET reservation" in p


NO_PMEM = {
    "pmem_is_block_device": False,
    "pmem_size": None,
    "pmem_capacity": None,
    "pmem_legacy_ranges": (),
    "cmdline_words": ("BOOT_IMAGE=/vmlinuz", "root=/dev/vda", "quiet"),
}


def test_without_a_reservation_the_ram_is_taken_on_demand() -> None:
    plan = decide(CFG, facts(**NO_PMEM, ram=GOOD_RAM))
    assert plan.problems == ()
    assert plan.mode == "on-demand"
    # The 52 MiB estimate, a quarter more, 32 MiB of room, whole 2 MiB pages.
    assert plan.ram_bytes == 98 * MiB
    assert any("98 MiB taken at arm time, in at most" in n for n in plan.notes)
    host = plan.as_dict()["pmem"]["ram_host"]
    assert host["page_sizes"] == [1 << 30, 2 * MiB] and host["free_2m_blocks"] == 800
    assert 100 < host["max_ranges"] < 128 and host["lockdown"] == "none"
    # pmem.size is a floor for what is taken.
    cfg = dataclasses.replace(CFG, pmem_size=512 * MiB)
    assert decide(cfg, facts(**NO_PMEM, ram=GOOD_RAM)).ram_bytes == 512 * MiB


def test_a_reservation_is_used_when_there_is_one() -> None:
    plan = decide(CFG, facts(ram=GOOD_RAM))
    assert plan.mode == "reserved" and plan.ram_bytes is None and plan.problems == ()


def test_ranges_left_from_the_last_on_demand_upgrade_are_not_a_reservation() -> None:
    # In the boot after an on-demand upgrade, a range not given back is still a /dev/pmemN.
    words = ("root=/dev/vda", "seamless.restore=G", "seamless.ram=on-demand", "memmap=64M!0x60000000")
    plan = decide(
        CFG,
        facts(
            cmdline_words=words,
            pmem_legacy_ranges=((0x60000000, 0x64000000),),
            pmem_size=64 * MiB,
            pmem_capacity=60 * MiB,
            ram=GOOD_RAM,
        ),
    )
    assert plan.mode == "on-demand" and plan.problems == ()
    # ... and it does not go to the next kernel either.
    assert "memmap" not in plan.cmdline and "seamless" not in plan.cmdline


def test_on_demand_refusals() -> None:
    locked = dataclasses.replace(GOOD_RAM, lockdown="integrity")
    p = only_problem(**NO_PMEM, ram=locked)
    assert "locked down (integrity)" in p and "kexec_file_load" in p and "pmem.mode: reserved" in p
    short = dataclasses.replace(GOOD_RAM, mem_available=100 * MiB)
    p = only_problem(**NO_PMEM, ram=short)
    assert "need 98 MiB of RAM taken at arm time, but only 100 MiB is available" in p
    assert "no 2 MiB hugetlb pages" in only_problem(
        **NO_PMEM, ram=dataclasses.replace(GOOD_RAM, page_sizes=())
    )
    assert "no nbd module" in only_problem(**NO_PMEM, ram=dataclasses.replace(GOOD_RAM, nbd_module=False))
    # A command line that leaves no room for the ranges.
    long = (*NO_PMEM["cmdline_words"], "x" * 1900)  # type: ignore[misc]
    p = only_problem(**{**NO_PMEM, "cmdline_words": long}, ram=GOOD_RAM)
    assert "no room left for the memmap=" in p


def test_fragmented_memory_is_a_note() -> None:
    plan = decide(CFG, facts(**NO_PMEM, ram=dataclasses.replace(GOOD_RAM, free_blocks=10)))
    assert plan.problems == ()
    assert any("only 20 MiB of the 98 MiB is free in 2 MiB blocks" in n for n in plan.notes)


def test_images_larger_than_pmem() -> None:
    units = (UnitPlan("app.service", 5812, (5812,), 900 * MiB, 990 * MiB, None),)
    assert "need about 990 MiB" in only_problem(units=units)


def test_unit_problem_is_passed_on() -> None:
    units = (UnitPlan("app.service", 0, (), 0, 0, "app.service is not running"),)
    assert only_problem(units=units) == "app.service is not running"


def test_low_pids_would_meet_the_next_boot() -> None:
    units = (UnitPlan("app.service", 4000, (4000, 4100), MiB, MiB, None),)
    p = only_problem(units=units)
    assert "PIDs [4000]" in p and "up to 4096" in p and "restart app.service" in p
    # A kernel that used many PIDs before the initramfs got a larger base: it counts.
    p = only_problem(units=units, pid_base=8000)
    assert "PIDs [4000, 4100]" in p and "up to 8000" in p
    # Without our initramfs script in this boot, nothing kept the range free.
    p = only_problem(units=units, pid_base=None)
    assert "without the seamless-systemd initramfs script" in p


def test_initrd_without_hook_and_without_initrd() -> None:
    assert "update-initramfs -u -k " + B in only_problem(initrd_has_hook=False)
    target = kernels.Kernel(B, Path(f"/boot/vmlinuz-{B}"), None)
    assert "update-initramfs -c -k " + B in only_problem(target=target)


def test_tools_and_config() -> None:
    assert "apt install criu" in only_problem(criu_installed=False)
    assert only_problem(kexec_problem="no kexec") == "no kexec"
    plan = decide(Config(), facts(units=()))
    assert len(plan.problems) == 1 and plan.problems[0].startswith("nothing to preserve: list units under")


def test_same_kernel_is_a_note_not_a_refusal() -> None:
    target = kernels.Kernel(A, Path(f"/boot/vmlinuz-{A}"), Path(f"/boot/initrd.img-{A}"))
    plan = decide(CFG, facts(target=target))
    assert plan.problems == () and "running one" in plan.notes[0]


def test_oneshot_units_are_not_a_problem() -> None:
    units = (
        UnitPlan("app.service", 5812, (5812,), MiB, MiB, None),
        UnitPlan("setup.service", 0, (), 0, 0, None, stateless=True),
    )
    plan = decide(Config(units=("app.service", "setup.service")), facts(units=units))
    assert plan.problems == ()


def test_unit_restarted_by_policy_is_a_note() -> None:
    units = (
        UnitPlan("app.service", 5812, (5812,), MiB, MiB, None),
        UnitPlan(
            "box.service", 99999, (99999,), MiB, 0, None, restart="box.service runs in its own mount ns"
        ),
    )
    plan = decide(Config(units=("app.service", "box.service")), facts(units=units))
    assert plan.problems == ()
    assert plan.notes == (
        "box.service will be restarted afresh, not preserved: box.service runs in its own mount ns",
    )
    assert plan.pid_floor == 5900 + PID_MARGIN  # its PIDs need no room in the new boot


def test_a_kept_unit_with_a_warning_is_ready_and_says_it() -> None:
    warn = "app.service listens on the unix socket /run/app/admin.sock, whose path …"
    units = (UnitPlan("app.service", 5812, (5812,), MiB, MiB, None, warnings=(warn,)),)
    plan = decide(CFG, facts(units=units))
    assert plan.problems == ()
    assert warn in plan.notes


def test_arm_refuses_ram_in_more_ranges_than_the_command_line_can_name(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    plan = decide(CFG, facts(**NO_PMEM, ram=GOOD_RAM))
    pieces = [[0x100000000 + i * 4 * MiB, 2 * MiB] for i in range(200)]
    monkeypatch.setattr(
        ram, "take", lambda size: {"bytes": size, "page": 2 * MiB, "ranges": pieces, "device": "/dev/nbd0"}
    )
    mounted: list[str] = []
    monkeypatch.setattr(ram, "mount", lambda device, where: mounted.append(device))
    with pytest.raises(PreflightError) as e:
        upgrade._take_ram(CFG, plan, "root=/dev/vda quiet")
    why = str(e.value)
    assert "came in 200 ranges" in why and "movablecore=" in why and "pmem.mode: reserved" in why
    assert mounted == []  # nothing made on RAM that cannot be handed over


def test_images_must_fit_the_reservation_with_room_to_grow() -> None:
    # The estimate is what CRIU writes; the reservation must hold it, its file system and some growth.
    def unit(mem: int) -> tuple[UnitPlan, ...]:
        return (UnitPlan("app.service", 5812, (5812,), mem, mem + IMAGE_OVERHEAD, None),)

    assert decide(CFG, facts(units=unit(400 * MiB))).problems == ()
    problem = only_problem(units=unit(440 * MiB))
    assert "images need about 440 MiB" in problem and "with room to grow" in problem, problem
    assert "holds 480 MiB: reserve more memory with memmap=" in problem, problem


def test_a_pmem_device_others_can_read_is_refused() -> None:
    """/dev/pmem0 holds every preserved service's memory: group disk must not read it raw."""
    assert decide(CFG, facts(pmem_mode=0o600)).problems == ()
    plan = decide(CFG, facts(pmem_mode=0o660))
    assert len(plan.problems) == 1
    assert "can be read by others than root (mode 0660)" in plan.problems[0]
    assert "60-seamless-pmem.rules" in plan.problems[0] and "udevadm trigger /dev/pmem0" in plan.problems[0]


def test_the_checkpoints_sigkill_is_a_clean_stop_while_armed(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """arm: a drop-in per preserved unit makes SIGKILL a clean exit; disarm takes it away and reloads."""
    monkeypatch.setattr(upgrade, "HOOK_DROPIN_DIR", tmp_path / "system")
    monkeypatch.setattr(upgrade.state, "ARMED", tmp_path / "armed.json")
    monkeypatch.setattr(upgrade, "kexec_loaded", lambda: False)
    monkeypatch.setattr(upgrade.ram, "REQUEST", tmp_path / "no-request")
    reloads: list[int] = []
    monkeypatch.setattr(upgrade.systemd, "daemon_reload", lambda: reloads.append(1))
    monkeypatch.setattr(upgrade.systemd, "stop_unit", lambda name: None)
    units = (
        UnitPlan("app.service", 5812, (5812,), MiB, MiB, None),
        UnitPlan("once.service", 0, (), 0, 0, None, stateless=True),
        UnitPlan("ctr.service", 5900, (), MiB, MiB, None, container="web"),
    )
    plan = dataclasses.replace(decide(CFG, facts()), units=units)
    assert upgrade._quiet_stops(plan)
    dropin = tmp_path / "system/app.service.d/50-seamless-checkpoint.conf"
    lines = dropin.read_text().splitlines()
    assert "SuccessExitStatus=SIGKILL" in lines and "RestartPreventExitStatus=SIGKILL" in lines
    assert sorted(p.parent.name for p in (tmp_path / "system").rglob("*.conf")) == ["app.service.d"]
    upgrade.state.write_json(upgrade.state.ARMED, {"units": [u.unit for u in units], "mount": str(tmp_path)})
    upgrade.disarm(quiet=True)
    assert not dropin.exists() and reloads == [1]


def test_a_package_manager_at_work_is_refused(tmp_path: Path) -> None:
    """dpkg holds its lock while it installs (perhaps this package, perhaps the kernel): no upgrade then."""
    import subprocess
    import sys

    lock = tmp_path / "lock"
    lock.write_bytes(b"")
    assert upgrade.lock_holder(lock) is None
    assert upgrade.lock_holder(tmp_path / "missing") is None
    # Another process takes the lock the way dpkg does (fcntl, whole file).
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            f"import fcntl,sys; f=open({str(lock)!r},'r+'); fcntl.lockf(f, fcntl.LOCK_EX); "
            "print('held', flush=True); sys.stdin.read()",
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "held\n"
        assert upgrade.lock_holder(lock) == holder.pid
    finally:
        holder.kill()
        holder.wait()
    assert upgrade.lock_holder(lock) is None
    plan = decide(CFG, facts(package_manager_pid=4321))
    assert len(plan.problems) == 1 and "PID 4321 holds /var/lib/dpkg/lock" in plan.problems[0]


def test_a_dump_out_of_room_says_so(tmp_path: Path) -> None:
    """The images outgrew the PMEM since plan: the reason says what ran out and what to do."""
    import errno

    gen = upgrade.state.Generation(tmp_path, "G1")
    gen.unit_dir("app.service").mkdir(parents=True)
    assert not upgrade._out_of_room(gen, "app.service", RuntimeError("criu dump failed"))
    assert upgrade._out_of_room(gen, "app.service", OSError(errno.ENOSPC, "No space left on device"))
    (gen.unit_dir("app.service") / "dump.log").write_text(
        "(01.20) Error (criu/page-xfer.c:433): Unable to write pages: No space left on device\n"
    )
    assert upgrade._out_of_room(gen, "app.service", RuntimeError("criu dump failed"))


def test_a_whole_dump_that_cannot_fit_is_refused_before_it_writes(tmp_path: Path) -> None:
    assert upgrade.room_problem(tmp_path, 1 << 20) is None
    why = upgrade.room_problem(tmp_path, 1 << 60)
    assert why is not None and "would need about 1099511627776 MiB" in why and "grew since" in why
    assert upgrade.room_problem(tmp_path, 1 << 60, held=1 << 60) is None  # a pre-dump round holds it all


def test_a_damaged_target_image_or_a_kernel_without_pmem_is_refused() -> None:
    assert "reinstall" in only_problem(image_problem="/boot/vmlinuz-x is cut short (1 of 2 bytes): reinstall")
    config = {k: v for k, v in facts().target_config.items() if k != "CONFIG_BLK_DEV_PMEM"}  # type: ignore[union-attr]
    assert "CONFIG_BLK_DEV_PMEM" in only_problem(RESERVED, target_config=config)
    assert decide(RESERVED, facts(target_config=config | {"CONFIG_BLK_DEV_PMEM": "y"})).problems == ()


def test_lazy_restore_on_a_kernel_without_userfaultfd_is_a_note() -> None:
    lazy = Config(units=("app.service",), lazy_restore=True)
    plan = decide(lazy, facts())
    assert plan.problems == ()
    assert any("CONFIG_USERFAULTFD" in n and "not be lazy" in n for n in plan.notes), plan.notes
    with_uffd = facts().target_config | {"CONFIG_USERFAULTFD": "y"}  # type: ignore[operator]
    assert not any("USERFAULTFD" in n for n in decide(lazy, facts(target_config=with_uffd)).notes)
    # With the pre-dump rounds only the last delta is lazy (CRIU restores the rounds' pages eagerly).
    assert any("only the memory written since the last round" in n for n in plan.notes)
    # A CRIU with packaging/criu's --lazy-parent-pages leaves the rounds' pages lazy too.
    patched = decide(lazy, facts(target_config=with_uffd, criu_lazy_parent=True))
    assert not any("last round" in n for n in patched.notes), patched.notes
    lazy_whole = Config(units=("app.service",), lazy_restore=True, pre_dump=False)
    assert not any("last round" in n for n in decide(lazy_whole, facts(target_config=with_uffd)).notes)
    assert not any("USERFAULTFD" in n for n in decide(CFG, facts()).notes)


def test_trial_dumps_run_side_by_side_and_name_every_unit_that_failed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import threading

    from seamless_systemd.errors import CheckpointError

    units = tuple(UnitPlan(f"u{i}.service", 100 + i, (100 + i,), MiB, MiB, None) for i in range(4))
    skipped = UnitPlan("once.service", 0, (), 0, 0, None, stateless=True)
    plan = decide(CFG, facts(units=(*units, skipped)))
    together = threading.Barrier(2, timeout=5)
    seen = []

    def dump(cfg: Config, gen: object, up: UnitPlan, pre_dump: bool) -> None:
        seen.append(up.unit)
        together.wait()  # two at a time, or this times out
        if up.unit in ("u1.service", "u3.service"):
            raise CheckpointError("criu said no")

    monkeypatch.setattr(upgrade.os, "cpu_count", lambda: 2)
    monkeypatch.setattr(upgrade, "_trial_dump", dump)
    with pytest.raises(PreflightError) as got:
        upgrade._trial_dumps(CFG, None, plan, False)  # type: ignore[arg-type]
    assert sorted(seen) == [u.unit for u in units]  # a stateless unit has nothing to dump
    assert got.value.problems == [
        "u1.service: trial checkpoint failed: criu said no",
        "u3.service: trial checkpoint failed: criu said no",
    ]
