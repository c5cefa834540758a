"""Fault rows that need kernels of their own (issue 10), in one VM run of the faults scenario.

Boot 1 (kernel A): the demo services hold state; a damaged kernel (its image
cut in half, built without the PMEM block driver) is refused before anything
stops, and so is a run while dpkg installs a package; then 'seamless-upgrade
run' into a kernel whose initramfs fails (a second run beside it is refused): the
services are checkpointed, the kexec happens, the new kernel panics and
panic=-1 resets the machine (QEMU exits; the host boots it again on kernel A,
as firmware would boot the default entry). Boot 2: an ordinary boot; the
services were started normally, the upgrade's record on disk became a report
that says it did not come back, nothing was restored.
"""

from __future__ import annotations

import pytest

from tests.vm import image as vmimage
from tests.vm import vm
from tests.vm.conftest import need, scenario_image

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def faults() -> vm.Scenario:
    return vm.run_scenario(scenario_image("faults"), vmimage.BUILD / "vm" / "faults")


def console_of(sc: vm.Scenario, n: int) -> str:
    return sc.consoles[n].read_text(errors="replace")


@pytest.mark.fault(
    "the target kernel's image cut in half, its config without CONFIG_BLK_DEV_PMEM",
    "run refused, both reasons named; nothing stopped, no kernel loaded",
)
def test_damaged_kernel_is_refused_before_anything_stops(faults: vm.Scenario) -> None:
    got = need(faults, "damaged-kernel")
    assert got["rc"] != 0, got["out"]
    assert "6.1.0-99-cloud-amd64" in got["out"] and "is cut short" in got["out"], got["out"]
    assert "CONFIG_BLK_DEV_PMEM" in got["out"], got["out"]
    assert got["pids_after"] == got["pids_before"]
    assert got["kexec_loaded"] == "0" and not got["armed"]


@pytest.mark.fault(
    "seamless-upgrade run while dpkg installs a package",
    "refused with dpkg's PID; nothing stopped; dpkg finishes",
)
def test_run_during_a_package_upgrade_is_refused(faults: vm.Scenario) -> None:
    got = need(faults, "package-upgrade")
    assert got["dpkg_locked"], got
    assert got["rc"] != 0 and f"a package manager is at work (PID {got['dpkg_pid']}" in got["out"], got
    assert got["pids_after"] == got["pids_before"] and got["kexec_loaded"] == "0"
    # dpkg itself was not disturbed.
    assert got["dpkg_rc"] == 0, got


@pytest.mark.fault(
    "two seamless-upgrade run at once",
    "the second is refused (the lock); the first goes on",
)
def test_second_run_beside_the_first_is_refused(faults: vm.Scenario) -> None:
    got = need(faults, "second-run")
    assert got["first_held_the_lock"], got
    assert got["rc"] != 0 and "another seamless-upgrade is running" in got["out"], got
    # ...and the first one went on: the kexec came (test_kernel_that_panics_...).
    assert need(faults, "after-panic")["report"]["generation"]


@pytest.mark.fault(
    "the new kernel panics (its initramfs fails); panic=-1 resets the machine",
    "an ordinary boot on the old kernel; the services run afresh; nothing restored",
)
def test_kernel_that_panics_comes_back_on_the_old_one(faults: vm.Scenario) -> None:
    need(faults, "panic-run")
    after = need(faults, "after-panic")
    returned = faults.get("panic-run-returned")
    assert returned is None or returned["rc"] == 0, returned
    # The checkpoints ran in the kexec shutdown; the new kernel started and its initramfs failed.
    assert "systemd-shutdown[1]: Rebooting with kexec." in console_of(faults, 0)
    console = console_of(faults, 0)
    assert "seamless-test: this initramfs fails on purpose" in console
    assert "Kernel panic - not syncing: Attempted to kill init" in console
    # The machine came back on the default kernel, with an ordinary boot.
    assert after["uname"] == vmimage.KERNEL_A
    assert "seamless.restore" not in after["cmdline"]
    assert after["restore_ran"] == "inactive"
    before = need(faults, "before")
    assert before["7777"]["state"]["counter"] == 3
    for port in ("7777", "7778", "7779"):
        st = after["states"][port]
        assert st["unit"]["ActiveState"] == "active"
        # Started normally: the memory state is gone (it was never on disk), nothing stale came back.
        assert st["state"]["counter"] == 0 and st["unit"]["fresh_starts"] == 1, st


@pytest.mark.fault(
    "(the same)",
    "the report says not-arrived, with the reason; the journal says it",
)
def test_report_says_the_upgrade_did_not_come_back(faults: vm.Scenario) -> None:
    after = need(faults, "after-panic")
    assert after["boot_check"] == "active", after
    assert not after["in_flight"]
    rep = after["report"]
    assert rep["outcome"] == "not-arrived", rep
    assert "6.1.0-98-cloud-amd64 never reached its restore" in rep["reason"], rep
    assert rep["kernel"]["to"] == "6.1.0-98-cloud-amd64"
    units = {u["unit"]: u for u in rep["units"]}
    assert set(units) == {f"seamless-demo@{p}.service" for p in (7777, 7778, 7779)}
    assert all(u["outcome"] == "cold-started" and u["active_state"] == "active" for u in units.values())
    assert any("did not come back" in line for line in after["journal"]), after["journal"]
