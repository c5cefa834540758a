"""Power cuts (issue 10): QEMU killed during the kexec, during the restore and during the dump.

The power scenario (tests/vm/guest/driver.py) runs 'seamless-upgrade run'
three times; each time the host kills QEMU at the console line that marks the
moment, and boots kernel A again (a machine that lost power comes back on its
default entry, with its RAM gone). After each cut: an ordinary boot, the
demo services running afresh, nothing restored, the report saying what
happened. Last, an upgrade that works: the PMEM is usable again and the
state comes back.
"""

from __future__ import annotations

from typing import Any

import pytest

from tests.vm import image as vmimage
from tests.vm import vm
from tests.vm.conftest import need, scenario_image

pytestmark = pytest.mark.integration

PORTS = ("7777", "7778", "7779")


@pytest.fixture(scope="module")
def power() -> vm.Scenario:
    return vm.run_scenario(scenario_image("power"), vmimage.BUILD / "vm" / "power", vm.POWER)


def cuts(sc: vm.Scenario) -> list[dict[str, Any]]:
    return [e.data for e in sc.events if e.name == "power-cut"]


def ordinary_boot(after: dict[str, Any]) -> None:
    """What every boot after a cut shows: kernel A, no restore, every unit running afresh."""
    assert after["uname"] == vmimage.KERNEL_A
    assert "seamless.restore" not in after["cmdline"]
    assert after["restore_ran"] == "inactive"
    for port in PORTS:
        st = after["states"][port]
        assert st["unit"]["ActiveState"] == "active", st
        # The counter lived in memory only: a fresh start, nothing stale restored.
        assert st["state"]["counter"] == 0 and st["unit"]["fresh_starts"] == 1, st
    assert after["boot_check"] == "active" and not after["in_flight"], after


def after_cut(sc: vm.Scenario, n: int, line: str, phase: str, outcome: str) -> dict[str, Any]:
    """The report of the boot after the Nth cut (at a console LINE holding LINE): an ordinary boot."""
    got = cuts(sc)
    assert len(got) > n and line in got[n]["line"], got
    after = need(sc, f"after-{phase}")
    ordinary_boot(after)
    rep: dict[str, Any] = after["report"]
    assert rep["outcome"] == outcome, rep
    if n:  # each upgrade has its own report
        earlier = need(sc, f"after-{('cut-kexec', 'cut-restore')[n - 1]}")["report"]
        assert rep["generation"] != earlier["generation"]
    # The writer lost no line it had fsync'ed before the cut (it said how far it was, before the run).
    synced = need(sc, f"before-{('start', 'cut-kexec', 'cut-restore')[n]}")["writer"]["state"]["synced"]
    assert synced > 0 and after["writer_log"]["whole_up_to"] >= synced, (synced, after["writer_log"])
    assert after["writer"]["synced"] > synced  # and it writes again
    return rep


@pytest.mark.fault(
    "power cut as the kexec starts the new kernel",
    "an ordinary boot, services afresh, report not-arrived; the writer lost no fsync'ed line",
)
def test_cut_during_the_kexec(power: vm.Scenario) -> None:
    rep = after_cut(power, 0, "kexec_core: Starting new kernel", "cut-kexec", "not-arrived")
    assert "never reached its restore" in rep["reason"]


@pytest.mark.fault(
    "power cut in the new boot as the restores start (seamless-restore.service ready, images being checked)",
    "an ordinary boot, services afresh, report interrupted; the writer lost no fsync'ed line",
)
def test_cut_during_the_restore(power: vm.Scenario) -> None:
    rep = after_cut(power, 1, "seamless-restore.", "cut-restore", "interrupted")
    assert f"kernel {vmimage.KERNEL_B} began the restore" in rep["reason"], rep


@pytest.mark.fault(
    "power cut during the checkpoint of one unit",
    "an ordinary boot, services afresh, report not-arrived; the writer lost no fsync'ed line",
)
def test_cut_during_the_dump(power: vm.Scenario) -> None:
    # The checkpoint hooks recorded the upgrade before the first dump; no kexec came.
    rep = after_cut(power, 2, "Checkpointing seamless-demo@7778.service", "cut-dump", "not-arrived")
    assert "during the checkpoints" in rep["reason"]


@pytest.mark.fault(
    "an upgrade after the three cuts",
    "the PMEM is used again: the demo services are restored with their state",
)
def test_upgrade_after_the_cuts_keeps_the_state(power: vm.Scenario) -> None:
    before, after = need(power, "before-upgrade"), need(power, "after")
    assert after["uname"] == vmimage.KERNEL_B
    assert after["finish"] == "active"
    for port in PORTS:
        was, now = before[port], after["states"][port]
        assert now["unit"]["ActiveState"] == "active"
        assert now["state"]["pid"] == was["state"]["pid"], (port, was, now)
        assert now["state"]["counter"] == was["state"]["counter"]
        assert now["state"]["blob_sha256"] == was["state"]["blob_sha256"]
    assert before["7777"]["state"]["counter"] == 3
    units = {u["unit"]: u for u in after["report"]["units"]}
    assert {units[f"seamless-demo@{p}.service"]["outcome"] for p in PORTS} == {"restored"}, units


@pytest.mark.fault(
    "a file a preserved unit had open replaced before the restore",
    "that unit starts afresh, the file named in the reason; it reads the new file",
)
def test_a_file_replaced_at_boot_makes_its_unit_start_afresh(power: vm.Scenario) -> None:
    """seamless-replacer.service put a new file at the writer's data path before the restore."""
    writer = {u["unit"]: u for u in need(power, "after")["report"]["units"]}["seamless-writer.service"]
    assert writer["outcome"] == "cold-started", writer
    assert "the file /var/lib/seamless-writer/data it had open was replaced" in writer["reason"], writer
    now = need(power, "writer-after")
    assert now["unit"]["ActiveState"] == "active"
    # Started afresh, it read the new file and went on with its log.
    assert now["state"]["settings"] == "settings v2"
    before = need(power, "before-upgrade")["writer"]["state"]
    assert now["state"]["pid"] != before["pid"] and now["state"]["synced"] > before["synced"]
