"""The VM upgrade test: real kernels, systemd, CRIU, kexec and PMEM under QEMU.

One scenario run (tests/vm/guest/driver.py, 'full') carries every check; the
tests below read what it saw. What they assert is what a sysadmin would
check: the service answers with the same in-memory state, `uname -r` changed,
the unit is active with the same MainPID, nothing was started afresh that
should not have been, and what could not be restored came up afresh.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests import browser
from tests.vm import image as vmimage
from tests.vm import vm
from tests.vm.conftest import need

pytestmark = pytest.mark.integration

MAIN = "7777"


def unit_name(port: str) -> str:
    return f"seamless-demo@{port}.service"


def unit_report(rep: dict[str, Any], port: str) -> dict[str, Any]:
    return next(u for u in rep["units"] if u["unit"] == f"seamless-demo@{port}.service")


@pytest.mark.fault(
    "plan/run with a unit CRIU cannot dump (a D-Bus client), a container started from a shell, "
    "a container that does not exist",
    "refused with the reasons; every service keeps its PID; no kernel loaded, not armed",
)
def test_refused_upgrade_leaves_everything_running(scenario: vm.Scenario) -> None:
    r = need(scenario, "refused")
    assert r["plan_rc"] == 3, r["plan_out"]
    assert r["run_rc"] == 3, r["run_out"]
    assert "seamless-blocker.service" in r["run_out"] and "/run/dbus/system_bus_socket" in r["run_out"]
    # Containers that cannot be kept are named with the reason and what to do.
    assert "container nosuch: no such podman container" in r["plan_out"]
    assert "container loose is not run by a systemd service of its own" in r["plan_out"]
    assert "podman generate systemd --new --name loose" in r["plan_out"]
    assert r["pids_after"] == r["pids_before"]
    assert r["kexec_loaded"] == "0" and not r["armed"]
    assert r["blocker"] == "active"


@pytest.mark.fault(
    "a member of group disk reads /dev/pmem0",
    "permission denied (udev rule: root only), while it can read /dev/vda",
)
def test_a_disk_group_member_cannot_read_the_pmem(scenario: vm.Scenario) -> None:
    """The images hold the services' memory: the package's udev rule makes /dev/pmem0 root's only."""
    acc = need(scenario, "pmem-access")
    assert (acc["mode"], acc["gid"]) == ("0600", 0), acc
    assert acc["disk_member_rc"] != 0 and "Permission denied" in acc["disk_member_out"], acc
    # The same user reads a disk of group disk: the refusal is the rule's, not a user without the group.
    assert acc["disk_member_reads_vda_rc"] == 0, acc


def test_plan_before_upgrade(scenario: vm.Scenario) -> None:
    plan = need(scenario, "plan")
    assert plan["rc"] == 0, plan["out"]
    assert f"{vmimage.KERNEL_A} -> {vmimage.KERNEL_B}" in plan["out"]
    assert "memmap= reservation kept" in plan["out"]


def test_kernel_changed_and_state_kept(scenario: vm.Scenario) -> None:
    before, after = need(scenario, "before"), need(scenario, "after")
    assert before[MAIN]["state"]["kernel"] == vmimage.KERNEL_A
    assert after["uname"] == vmimage.KERNEL_B
    b, a = before[MAIN]["state"], after["states"][MAIN]["state"]
    assert a["kernel"] == vmimage.KERNEL_B
    assert (a["counter"], a["blob_sha256"], a["started_at"]) == (
        b["counter"],
        b["blob_sha256"],
        b["started_at"],
    )
    assert b["counter"] == 3


def test_unit_active_with_same_main_pid_no_cold_start(scenario: vm.Scenario) -> None:
    before, after = need(scenario, "before"), need(scenario, "after")
    ub, ua = before[MAIN]["unit"], after["states"][MAIN]["unit"]
    assert ua["ActiveState"] == "active"
    assert ua["MainPID"] == ub["MainPID"] == str(before[MAIN]["state"]["pid"])
    assert ua["fresh_starts"] == 0, ua["journal_tail"]
    # Its output still reaches the journal under its own name after the restore.
    assert any("GET: counter=3" in line for line in ua["journal_tail"]), ua["journal_tail"]
    # The restore drop-in is gone: a later crash starts the service normally.
    assert "50-seamless-restore.conf" not in ua["DropInPaths"]


def test_report(scenario: vm.Scenario) -> None:
    rep = need(scenario, "after")["report"]
    assert rep["kernel"] == {"from": vmimage.KERNEL_A, "to": vmimage.KERNEL_B}
    main = unit_report(rep, MAIN)
    assert main["outcome"] == "restored"
    assert main["main_pid_before"] == main["main_pid_after"]
    for phase in ("checkpoint", "kexec", "boot", "restore", "downtime"):
        assert isinstance(rep["seconds"][phase], float) and rep["seconds"][phase] >= 0, phase


@pytest.mark.fault(
    "the images of two units overwritten between the dump and the restore",
    "those two start afresh with 'checksum mismatch' in the report; the others are restored",
)
def test_damaged_images_start_afresh(scenario: vm.Scenario) -> None:
    before, after = need(scenario, "before"), need(scenario, "after")
    rep = after["report"]
    for port, why in (("7778", "checksum mismatch"), ("7779", "criu restore failed")):
        u = unit_report(rep, port)
        assert u["outcome"] == "cold-started", u
        assert why in (u["reason"] or ""), u
        st = after["states"][port]
        assert st["unit"]["ActiveState"] == "active"
        assert st["state"]["counter"] == 0  # a fresh start, as promised
        assert st["state"]["blob_sha256"] != before[port]["state"]["blob_sha256"]
        assert st["unit"]["fresh_starts"] == 1


def test_arm_then_plain_systemctl_kexec(scenario: vm.Scenario) -> None:
    arm, after2 = need(scenario, "arm"), need(scenario, "after2")
    assert arm["rc"] == 0, arm["out"]
    assert after2["uname"] == vmimage.KERNEL_A
    after = need(scenario, "after")
    a, b = after["states"][MAIN]["state"], after2["states"][MAIN]["state"]
    assert b["counter"] == a["counter"] + 1  # the INC done between the upgrades
    assert b["blob_sha256"] == a["blob_sha256"]
    for port in ("7777", "7778", "7779"):
        assert unit_report(after2["report"], port)["outcome"] == "restored"
        assert after2["states"][port]["unit"]["fresh_starts"] == 0


def all_afresh(states: dict[str, Any]) -> None:
    """Every demo runs, started once in this boot, its in-memory counter back to 0."""
    for port in ("7777", "7778", "7779"):
        st = states[port]
        assert st["unit"]["ActiveState"] == "active" and st["unit"]["fresh_starts"] == 1, st
        assert st["state"]["counter"] == 0, st


@pytest.mark.fault(
    "armed, then an ordinary reboot",
    "no restore: every unit starts afresh; no report for it",
)
def test_armed_but_ordinary_reboot_starts_fresh(scenario: vm.Scenario) -> None:
    arm2, rb = need(scenario, "arm2"), need(scenario, "rebooted")
    assert arm2["rc"] == 0, arm2["out"]
    assert arm2["status"]["armed"] is not None
    assert "seamless.restore" not in rb["cmdline"]
    all_afresh(rb["states"])
    # One report per upgrade (A to B, B to A2), beside each its page-cache re-warm summary.
    upgrades = [r for r in rb["reports"] if r != "last.json" and not r.endswith(".page-cache.json")]
    assert len(upgrades) == 2, rb["reports"]
    assert not rb["pmem_mounted"]


@pytest.mark.fault(
    "'run --or-reboot' (a fleet tool's reboot command) with a unit CRIU cannot dump",
    "an ordinary reboot; the report and the journal say why; every unit starts afresh",
)
def test_or_reboot_falls_back_to_an_ordinary_reboot(scenario: vm.Scenario) -> None:
    ran, back = need(scenario, "or-reboot"), need(scenario, "fell-back")
    assert ran["rc"] == 0, ran["out"]
    assert "rebooting the ordinary way instead" in ran["out"], ran["out"]
    # Refused for the reason plan gives, and said so before the reboot.
    assert "seamless-blocker.service" in ran["out"] and "/run/dbus/system_bus_socket" in ran["out"]
    assert back["uname"] == vmimage.KERNEL_A and "seamless.restore" not in back["cmdline"]
    rep = back["report"]
    assert rep["outcome"] == "rebooted", rep
    assert "seamless-blocker.service" in rep["reason"] and "rebooted the ordinary way" in rep["reason"]
    assert "rebooted: the seamless upgrade was refused" in back["status"], back["status"]
    all_afresh(back["states"])
    said = need(scenario, "journal")
    (fell,) = said["FALLBACK"]
    assert fell["PRIORITY"] == "4" and "seamless-blocker.service" in fell["SEAMLESS_REASON"], fell
    assert "rebooting the ordinary way instead" in fell["MESSAGE"]
    assert "started an ordinary reboot instead, as asked" in said["fallback_explained"]
    # The same refusal, from the arm it started (the first refusal was boot 1's 'run').
    refused = said["REFUSED"]
    assert len(refused) == 2 and all("seamless-blocker.service" in e["SEAMLESS_REASON"] for e in refused)


def test_the_journal_lists_every_upgrade_and_each_units_outcome(scenario: vm.Scenario) -> None:
    """journalctl MESSAGE_ID=... lists the two upgrades, with the report's outcomes, and -x explains them."""
    said = need(scenario, "journal")
    reports = [need(scenario, "after")["report"], need(scenario, "after2")["report"]]
    upgrades = said["UPGRADE"]
    assert [u["SEAMLESS_GENERATION"] for u in upgrades] == [r["generation"] for r in reports], upgrades
    assert [u["SEAMLESS_KERNEL_TO"] for u in upgrades] == [vmimage.KERNEL_B, vmimage.KERNEL_A]
    for entry, rep in zip(upgrades, reports, strict=True):
        assert entry["SEAMLESS_OUTCOME"] == "finished"
        kept = sum(u["outcome"] == "restored" for u in rep["units"])
        assert entry["SEAMLESS_UNITS_RESTORED"] == str(kept) and entry["SEAMLESS_UNITS"] == str(
            len(rep["units"])
        )
        assert float(entry["SEAMLESS_DOWNTIME_SEC"]) == pytest.approx(rep["seconds"]["downtime"], abs=0.001)
        # One entry per unit, each with the report's outcome and reason.
        for u in rep["units"]:
            if u["unit"] not in (unit_name(p) for p in ("7777", "7778", "7779")):
                continue
            (mine,) = [
                e
                for e in said["UNIT_OUTCOME"]
                if e["UNIT"] == u["unit"] and e["SEAMLESS_GENERATION"] == rep["generation"]
            ]
            assert mine["SEAMLESS_OUTCOME"] == u["outcome"], (mine, u)
            assert mine.get("SEAMLESS_REASON") == u.get("reason"), (mine, u)
            assert mine["PRIORITY"] == ("6" if u["outcome"] == "restored" else "4")
    # 'journalctl -u UNIT' shows them beside the unit's own lines.
    assert [e["SEAMLESS_GENERATION"] for e in said["by_unit"]] == [r["generation"] for r in reports]
    assert all(e["SEAMLESS_OUTCOME"] == "restored" for e in said["by_unit"])
    # The catalog (journalctl -x), with the entry's fields in its text.
    assert f"The kernel upgrade {reports[1]['generation']} from {vmimage.KERNEL_B}" in said["explained"]
    assert "'seamless-upgrade report' shows the whole report" in said["explained"]
    # The phases before the kexec: armed three times (run, arm --kernel A, the arm before a reboot).
    assert [e["SEAMLESS_KERNEL_TO"] for e in said["ARMED"]] == [
        vmimage.KERNEL_B,
        vmimage.KERNEL_A,
        vmimage.KERNEL_B,
    ]
    (kexec,) = said["KEXEC"]
    assert kexec["SEAMLESS_GENERATION"] == reports[0]["generation"] and kexec["_SYSTEMD_UNIT"] == (
        "seamless-upgrade.service"
    )


def test_the_journal_has_each_checkpoint(scenario: vm.Scenario) -> None:
    said = need(scenario, "journal")
    ok = [e for e in said["CHECKPOINT"] if e["UNIT"] == unit_name(MAIN)]
    assert len(ok) == 2 and all(e["SEAMLESS_OUTCOME"] == "checkpointed" for e in ok), ok
    assert all(int(e["SEAMLESS_IMAGE_BYTES"]) > 0 and float(e["SEAMLESS_FROZEN_SEC"]) > 0 for e in ok), ok
    assert {e["_SYSTEMD_UNIT"] for e in ok} == {f"seamless-checkpoint@{unit_name(MAIN)}.service"}
    # Kept by the first upgrade; past the PMEM by the second's checkpoint.
    grower = [e for e in said["CHECKPOINT"] if e["UNIT"] == "seamless-grower.service"]
    assert [e["SEAMLESS_OUTCOME"] for e in grower] == ["checkpointed", "checkpoint-failed"], grower
    grew = grower[1]
    assert grew["PRIORITY"] == "3", grew
    assert "grew since" in grew["SEAMLESS_REASON"], grew


def test_the_timeline_of_the_upgrade_as_chromium_draws_it(scenario: vm.Scenario) -> None:
    """'seamless-upgrade report --svg' in the guest: every unit's row, its bars in order, its outcome."""
    drawn, rep = need(scenario, "timeline"), need(scenario, "after")["report"]
    assert drawn["rc"] == 0 and drawn["svg"].startswith("<svg "), drawn
    layout = browser.draw(drawn["svg"], vmimage.BUILD / "vm" / "timeline")
    browser.check(layout, rep)
    # The main demo: restored, and its restore is drawn after the new kernel's boot.
    bars = {(b["row"], b["phase"]): b["box"] for b in layout["bars"]}
    assert bars[(unit_name(MAIN), "restore")][0] >= bars[("new kernel's boot", "boot")][0]
    outcomes = {o["row"]: o["text"] for o in layout["outcomes"]}
    assert outcomes[unit_name(MAIN)] == "restored"
    damaged = unit_report(rep, "7778")
    assert outcomes[unit_name("7778")].startswith(f"cold-started: {damaged['reason'][:12]}"), outcomes


def test_the_kernel_hook_says_the_new_kernel_is_ready(scenario: vm.Scenario) -> None:
    """/etc/kernel/postinst.d/seamless-systemd, as run-parts calls it: the installer, status, journal."""
    hook = need(scenario, "kernel-hook")
    assert hook["rc"] == 0, hook["out"]
    told = f"kernel {vmimage.KERNEL_B} is installed: 'seamless-upgrade run' switches to it, keeping "
    assert hook["out"].startswith(f"seamless-systemd: {told}"), hook["out"]
    assert unit_name(MAIN) in hook["out"]
    assert told[0].upper() + told[1:] in hook["status"], hook["status"]
    said = need(scenario, "journal")["KERNEL"]
    assert [(e["SEAMLESS_KERNEL_TO"], e["SEAMLESS_READY"]) for e in said] == [(vmimage.KERNEL_B, "yes")], said
    # Kept across boots while B is newer than the running kernel (the fifth boot runs A again).
    assert told[0].upper() + told[1:] in need(scenario, "fell-back")["status"]


def busctl_string(out: str) -> Any:
    """The JSON inside the one string a 'busctl --json=short call' printed."""
    return json.loads(json.loads(out)["data"][0])


def test_the_dbus_api_plans_as_the_cli_does_and_refuses_nobody(scenario: vm.Scenario) -> None:
    """busctl on the system bus: the service is activated by the call, its plan is the CLI's."""
    got = need(scenario, "dbus")
    assert got["active_before"] == "inactive" and got["active_after"] == "active", got
    assert got["plan_rc"] == 0, got["plan"]
    over_bus, cli = busctl_string(got["plan"]), json.loads(got["cli_plan"])
    # The same plan; what a process does between two looks (PIDs, memory) may differ.
    for key in ("kernel", "problems"):
        assert over_bus[key] == cli[key], key
    assert [u["unit"] for u in over_bus["units"]] == [u["unit"] for u in cli["units"]]
    assert over_bus["pmem"]["mode"] == cli["pmem"]["mode"]
    # Progress while it planned: the units it looked at.
    assert any(unit_name(MAIN) in line for line in got["signals"]), got["signals"]
    # Anyone may ask the status; nobody may arm (polkit: administrators only).
    assert got["nobody_status_rc"] == 0 and "units" in busctl_string(got["nobody_status"])
    assert got["nobody_arm_rc"] != 0 and not got["armed"], got
    if got["polkit"]:
        assert "not authorized for org.seamlesssystemd.upgrade.manage (polkit)" in got["nobody_arm"], got
    else:
        # The service's own check (root only): busctl says AccessDenied in its own words.
        assert "Access denied" in got["nobody_arm"], got
