"""Plan decisions on made-up hosts: what is refused, with which reason."""

import dataclasses
from pathlib import Path

from seamless_systemd import kernels
from seamless_systemd.config import Config
from seamless_systemd.upgrade import PID_MARGIN, HostFacts, UnitPlan, decide

A = "6.1.0-47-cloud-amd64"
B = "6.1.0-53-cloud-amd64"
MiB = 1 << 20
CFG = Config(units=("app.service",))


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
    )
    return dataclasses.replace(good, **changes)  # type: ignore[arg-type]


def test_good_host_is_ready() -> None:
    plan = decide(CFG, facts())
    assert plan.problems == ()
    assert plan.memmap_kept
    assert plan.kernel_to.version == B
    assert plan.cmdline == "root=/dev/vda memmap=512M!1536M quiet"
    assert plan.pid_floor == 5900 + PID_MARGIN
    assert plan.estimate_bytes == 52 * MiB


def test_pid_floor_is_above_every_preserved_pid() -> None:
    units = (UnitPlan("app.service", 30000, (30000, 30001), MiB, MiB, None),)
    assert decide(CFG, facts(units=units, last_pid=400)).pid_floor == 30001 + PID_MARGIN


def only_problem(**changes: object) -> str:
    plan = decide(CFG, facts(**changes))
    assert len(plan.problems) == 1, plan.problems
    return plan.problems[0]


def test_missing_pmem_says_how_to_reserve() -> None:
    p = only_problem(pmem_is_block_device=False, pmem_size=None, pmem_capacity=None, pmem_legacy_ranges=())
    assert "/dev/pmem0 does not exist" in p and "memmap=512M!1536M" in p and "update-grub" in p


def test_pmem_not_from_memmap_would_lose_images() -> None:
    p = only_problem(cmdline_words=("root=/dev/vda", "memmap=256M!1536M"))
    assert "not a memmap=SIZE!OFFSET reservation" in p


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
