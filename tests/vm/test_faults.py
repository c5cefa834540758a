"""Fault rows that need kernels of their own (issue 10), in one VM run of the faults scenario.

Boot 1 (kernel A): the demo services hold state; a damaged kernel (its image
cut in half, built without the PMEM block driver) is refused before anything
stops, and so is a run while dpkg installs a package; then 'seamless-upgrade
run' into a kernel whose initramfs fails (a second run beside it is refused): the
services are checkpointed, the kexec happens, the new kernel panics and
the panic=30 the upgrade put on its command line (the machine boots without
one) resets it 30 s later (QEMU exits; the host boots it again on kernel A,
as firmware would boot the default entry). Boot 2: an ordinary boot; the
services were started normally, the upgrade's record on disk became a report
that says it did not come back, nothing was restored. Then an upgrade to B in
which CRIU is killed midway through the dump of 7779 (at the shutdown) and
through the restore of 7778, and the root file system is full from before the
restore, and the spoiler gives one image of a fourth demo (7798) to another
owner with mode 0644 after its checkpoint. Boot 3 (kernel B): 7777 restored,
7778, 7779 and 7798 afresh, nothing half-restored left behind, the report on
the PMEM only.
"""

from __future__ import annotations

import errno
from typing import Any

import pytest

from tests.vm import image as vmimage
from tests.vm import vm
from tests.vm.conftest import need, scenario_image

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def faults() -> vm.Scenario:
    return vm.run_scenario(scenario_image("faults"), vmimage.BUILD / "vm" / "faults", vm.FAULTS)


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
    "a damaged kernel installed: the kernel hook, status, and 'run --or-reboot' into it",
    "the hook and status say a switch would be refused and why; run --or-reboot neither upgrades "
    "nor reboots (exit 1)",
)
def test_a_damaged_kernel_is_told_at_install_and_not_rebooted_into(faults: vm.Scenario) -> None:
    got = need(faults, "damaged-kernel")
    assert got["hook_rc"] == 0, got["hook_out"]  # the kernel's installation goes on
    told = "kernel 6.1.0-99-cloud-amd64 is installed, but a seamless switch to it would be refused"
    assert told in got["hook_out"] and "is cut short" in got["hook_out"], got["hook_out"]
    assert told[0].upper() + told[1:] in got["status"], got["status"]
    assert got["or_reboot_rc"] == 1, got["or_reboot_out"]
    assert "Not rebooting either, the machine would not come back" in got["or_reboot_out"], got
    assert got["pids_after"] == got["pids_before"]


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
    "the new kernel panics (its initramfs fails) on a machine booted without panic=",
    "it reboots by the panic=30 the upgrade added; an ordinary boot on the old kernel; "
    "the services run afresh; nothing restored",
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
    # The machine has no panic= of its own: the upgrade's word is what reset it.
    assert "panic=" not in need(faults, "boot")["cmdline"]
    assert "Rebooting in 30 seconds" in console
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
    demos = {f"seamless-demo@{p}.service" for p in (7777, 7778, 7779, 7798)}
    assert set(units) == demos | {"seamless-writer.service"}, set(units)
    assert all(u["outcome"] == "cold-started" and u["active_state"] == "active" for u in units.values())
    assert any("did not come back" in line for line in after["journal"]), after["journal"]


def kills(sc: vm.Scenario) -> tuple[dict[str, Any], dict[str, Any], dict[str, dict[str, Any]]]:
    """The last upgrade's boot: what it found, its report, the report's units by name."""
    after = need(sc, "after-kills")
    rep = after["report"]
    assert after["uname"] == vmimage.KERNEL_B and rep.get("kernel", {}).get("to") == vmimage.KERNEL_B, after
    return after, rep, {u["unit"]: u for u in rep["units"]}


@pytest.mark.fault(
    "criu dump killed (SIGKILL) midway through one of three units at the kexec shutdown",
    "that unit starts afresh with the reason; the other units are restored with their state",
)
def test_a_dump_killed_midway_starts_that_unit_afresh(faults: vm.Scenario) -> None:
    killed = need(faults, "criu-killed-dump")
    assert killed["unit"] == "seamless-demo@7779.service" and killed["held"], killed
    after, _, units = kills(faults)
    before = need(faults, "before-kills")
    u = units["seamless-demo@7779.service"]
    assert u["outcome"] == "cold-started" and "criu dump was killed (SIGKILL)" in u["reason"], u
    st = after["states"]["7779"]
    assert st["unit"]["ActiveState"] == "active" and st["state"]["counter"] == 0, st
    # 7777 came back as it was: the same blob, the same counter, the same process.
    kept, was = after["states"]["7777"], before["7777"]
    assert units["seamless-demo@7777.service"]["outcome"] == "restored", units
    assert kept["state"]["counter"] == was["state"]["counter"] > 0, (kept, was)
    assert kept["state"]["blob_sha256"] == was["state"]["blob_sha256"]
    assert kept["state"]["pid"] == was["state"]["pid"]


@pytest.mark.fault(
    "criu restore killed (SIGKILL) once it has forked the unit's tree",
    "no half-restored process left in the unit; it starts afresh with the reason",
)
def test_a_restore_killed_midway_leaves_nothing_behind(faults: vm.Scenario) -> None:
    killed = need(faults, "criu-killed-restore")
    assert killed["unit"] == "seamless-demo@7778.service" and killed["held"], killed
    after, _, units = kills(faults)
    u = units["seamless-demo@7778.service"]
    assert u["outcome"] == "cold-started" and "criu restore was killed (SIGKILL)" in u["reason"], u
    st = after["states"]["7778"]
    assert st["unit"]["ActiveState"] == "active" and st["state"]["counter"] == 0, st
    # The unit holds one process: the fresh one systemd started, none of the half-restored tree.
    group = after["groups"]["7778"]
    assert [p["pid"] for p in group] == [int(st["unit"]["MainPID"])], group
    assert "demo.py 7778" in group[0]["cmdline"] and not set(killed["held"]) & {p["pid"] for p in group}
    # Nor a mount: criu's cgroup yard in its working directory (the images) was detached, so that
    # the next upgrade can remove this generation (it could not: 'io.pressure', EPERM).
    assert after["mounts_in_images"] == [], after["mounts_in_images"]


@pytest.mark.fault(
    "the root file system (/var with it) full in the restore boot, from before the restore",
    "the units are restored all the same; the report stays on the PMEM for that boot, the journal says why",
)
def test_a_full_var_in_the_restore_boot(faults: vm.Scenario) -> None:
    filled = need(faults, "var-filled")
    assert filled["filler"] > 0, filled
    # Full for root too (ext4 keeps a few blocks even from root: f_bfree is not 0).
    after, _, units = kills(faults)
    assert after["filler"] and after["probe_errno"] == errno.ENOSPC, after
    assert after["finish"] == "active", after
    assert units["seamless-demo@7777.service"]["outcome"] == "restored", units
    assert all(s["unit"]["ActiveState"] == "active" for s in after["states"].values()), after["states"]
    # 'seamless-upgrade report' shows this boot's report from the PMEM; /var never got it.
    assert not after["kept_on_disk"], after
    assert any("Cannot keep the report" in line for line in after["finish_log"]), after["finish_log"]


@pytest.mark.fault(
    "a user other than root runs plan, run, arm, disarm, restore-prepare, restore-unit",
    "each refused with a message that says root is needed; nothing armed, no kernel loaded",
)
def test_every_entry_point_refuses_a_user_other_than_root(faults: vm.Scenario) -> None:
    got = need(faults, "non-root")
    for call, res in got["calls"].items():
        assert res["rc"] != 0 and "root" in res["out"], (call, res)
        assert "Traceback" not in res["out"], (call, res)
    assert not got["armed"] and got["kexec_loaded"] == "0", got


@pytest.mark.fault(
    "the upgrade's manifest on the PMEM cut in half at the shutdown",
    "nothing restored, no unit failed; every unit starts afresh; the report says not-restored (no manifest)",
)
def test_a_garbled_manifest_restores_nothing_and_breaks_nothing(faults: vm.Scenario) -> None:
    # Seen only if the shutdown the run queued leaves it the time to say it.
    ran = faults.get("garble-run")
    assert ran is None or ran["rc"] == 0, ran
    after = need(faults, "after-garbled")
    assert after["uname"] == vmimage.KERNEL_A and "seamless.restore=" in after["cmdline"], after["cmdline"]
    assert after["generator"]["skipped"] == "no manifest", after["generator"]
    assert after["failed_units"] == [], after["failed_units"]
    assert after["prepare"]["Result"] == "success", after["prepare"]
    for port in ("7777", "7778", "7779"):
        st = after["states"][port]
        assert st["unit"]["ActiveState"] == "active" and st["state"]["counter"] == 0, st
    rep = after["report"]
    assert rep["outcome"] == "not-restored" and "no manifest" in rep["reason"], rep
    assert any(
        "no readable manifest" in line and "damaged after the checkpoint" in line
        for line in after["kernel_log"]
    ), after["kernel_log"]


@pytest.mark.fault(
    "seamless.* words no upgrade wrote on a kernel command line (a generation '../../etc', a mount '/etc')",
    "an ordinary boot: nothing restored, no unit failed, every unit runs; the generator says why",
)
def test_malformed_words_on_the_command_line_break_nothing(faults: vm.Scenario) -> None:
    words = need(faults, "malformed-kexec")["words"]
    after = need(faults, "after-malformed")
    assert after["uname"] == vmimage.KERNEL_B, after
    assert all(w in after["cmdline"].split() for w in words), after["cmdline"]
    assert after["generator"]["skipped"] == "malformed generation", after["generator"]
    assert after["failed_units"] == [], after["failed_units"]
    assert all(s["unit"]["ActiveState"] == "active" for s in after["states"].values()), after["states"]
    assert not after["in_flight"], after


def test_plan_says_what_brings_the_machine_back(faults: vm.Scenario) -> None:
    """plan's word on a new kernel that panics or hangs, on a machine with neither panic= nor a watchdog."""
    got = need(faults, "plan-guard")
    assert got["cmdline"] and got["cmdline"].split()[-1] == "panic=30", got["cmdline"]
    notes = " ".join(got["notes"] or [])
    assert "if the new kernel panics before its restore, it reboots (panic=30)" in notes, got["notes"]
    # Debian's cloud kernels have no driver for the watchdogs QEMU emulates: plan says nothing resets a hang.
    assert "nothing resets the machine: it has no hardware watchdog" in notes, got["notes"]


@pytest.mark.fault(
    "one image file of a unit given to another owner with mode 0644 after its checkpoint",
    "that unit starts afresh ('images tampered with', the file, owner and mode named); the others unaffected",
)
def test_images_whose_owner_or_mode_changed_are_not_restored(faults: vm.Scenario) -> None:
    after, _, units = kills(faults)
    u = units["seamless-demo@7798.service"]
    assert u["outcome"] == "cold-started", u
    assert "images tampered with" in u["reason"] and "is owned by UID 65534 with mode 0644" in u["reason"], u
    before = need(faults, "before-kills")["7798"]
    st = after["states"]["7798"]
    assert before["state"]["counter"] > 0 and st["state"]["counter"] == 0, (before, st)
    assert st["unit"]["ActiveState"] == "active" and st["state"]["pid"] != before["state"]["pid"], st
    assert units["seamless-demo@7777.service"]["outcome"] == "restored", units


@pytest.mark.fault(
    "(every row above) a service appends numbered lines to a file on disk, fsync'ing each",
    "after each of the four upgrades, its log holds every line it had said was fsync'ed before the upgrade",
)
def test_no_fsynced_line_is_lost(faults: vm.Scenario) -> None:
    for row in ("panic", "kills", "garbled", "malformed"):
        before, after = need(faults, f"writer-before-{row}"), need(faults, f"writer-after-{row}")
        synced = before["state"]["synced"]
        assert synced > 0 and after["log"]["whole_up_to"] >= synced, (row, before, after)
        # Numbered 1..N with no line missing or repeated in between. With / full (the kills row) the
        # line being written may be torn, and it stays in the log in the rows after: one at most.
        log = after["log"]
        assert log["whole_up_to"] == log["lines"] - log.get("torn", 0) and log.get("torn", 0) <= 1, (row, log)
        assert after["unit"]["ActiveState"] == "active", (row, after["unit"])
