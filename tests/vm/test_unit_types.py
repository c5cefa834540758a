"""Unit types and process shapes across the upgrade (same VM run as test_upgrade.py).

Each service answers with state that only its memory holds; after the kexec
it must answer the same, as the same processes, under the same unit.
"""

from __future__ import annotations

from typing import Any

import pytest

from tests.vm import vm
from tests.vm.conftest import need

pytestmark = pytest.mark.integration

PROCESS_UNITS = [
    "seamless-exec.service",
    "seamless-notify.service",
    "seamless-forking.service",
    "seamless-forking-nopid.service",
    "seamless-prefork.service",
    "seamless-backend.service",
    "seamless-frontend.service",
]


def report_of(sc: vm.Scenario, unit: str) -> dict[str, Any]:
    rep = need(sc, "after")["report"]
    return next(u for u in rep["units"] if u["unit"] == unit)


@pytest.mark.parametrize("unit", PROCESS_UNITS)
def test_same_processes_same_state(scenario: vm.Scenario, unit: str) -> None:
    before, after = need(scenario, "types-before")[unit], need(scenario, "types-after")[unit]
    assert after["ActiveState"] == "active", after
    assert after["MainPID"] == before["MainPID"] != "0"
    assert after["pids"] == before["pids"]  # every process of the unit, workers and children too
    assert after["NRestarts"] == "0"
    assert after["Type"] == before["Type"]  # the restore drop-in is gone again
    assert "50-seamless-restore.conf" not in after["DropInPaths"]
    assert report_of(scenario, unit)["outcome"] == "restored"
    if "reply" in before:
        b, a = before["reply"], after["reply"]
        assert (a["counter"], a["blob_sha256"], a["started_at"]) == (
            b["counter"],
            b["blob_sha256"],
            b["started_at"],
        )
        assert a["kernel"] != b["kernel"]


def test_counters_were_touched(scenario: vm.Scenario) -> None:
    before = need(scenario, "types-before")
    assert before["seamless-exec.service"]["reply"]["counter"] == 2
    assert before["seamless-frontend.service"]["reply"]["backend"]["counter"] == 2


def test_backend_state_behind_frontend(scenario: vm.Scenario) -> None:
    b = need(scenario, "types-before")["seamless-frontend.service"]["reply"]["backend"]
    a = need(scenario, "types-after")["seamless-frontend.service"]["reply"]["backend"]
    assert (a["counter"], a["blob_sha256"]) == (b["counter"], b["blob_sha256"])


def test_notify_service_reloads_after_restore(scenario: vm.Scenario) -> None:
    before = need(scenario, "types-before")["seamless-notify.service"]["reply"]
    reload = need(scenario, "types-reload")
    assert reload["rc"] == 0, reload["out"]
    assert reload["reply"]["reloads"] == before["reloads"] + 1
    assert reload["reply"]["blob_sha256"] == before["blob_sha256"]


def test_prefork_workers_and_child_kept(scenario: vm.Scenario) -> None:
    before = need(scenario, "types-before")["seamless-prefork.service"]
    assert len(before["pids"]) == 4  # main, two workers, a child
    assert need(scenario, "types-after")["seamless-prefork.service"]["pids"] == before["pids"]


def test_forking_pid_file_written_again(scenario: vm.Scenario) -> None:
    after = need(scenario, "types-after")["seamless-forking.service"]
    assert after["pid_file"] is not None and after["pid_file"].strip() == after["MainPID"]


def test_stdout_to_file_keeps_flowing(scenario: vm.Scenario) -> None:
    before = need(scenario, "types-before")["seamless-exec.service"]
    after = need(scenario, "types-after")["seamless-exec.service"]
    assert after["log_fresh_starts"] == before["log_fresh_starts"] == 1
    assert after["log_tail"][-1] == "GET: counter=2"


def test_oneshot_is_active_again(scenario: vm.Scenario) -> None:
    before = need(scenario, "types-before")["seamless-oneshot.service"]
    after = need(scenario, "types-after")["seamless-oneshot.service"]
    assert before["ActiveState"] == after["ActiveState"] == "active"
    assert after["stamp"] and after["stamp"] != before["stamp"]  # it ran again in the new boot
    assert report_of(scenario, "seamless-oneshot.service")["outcome"] == "rerun"


def test_unsupported_sandbox_restarted_by_policy(scenario: vm.Scenario) -> None:
    plan = need(scenario, "plan")
    assert "seamless-sandboxed.service will be restarted afresh" in plan["out"], plan["out"]
    before = need(scenario, "types-before")["seamless-sandboxed.service"]
    after = need(scenario, "types-after")["seamless-sandboxed.service"]
    assert before["reply"]["counter"] == 2
    assert after["ActiveState"] == "active"
    assert after["reply"]["counter"] == 0 and after["fresh_starts"] == 1  # started afresh, as configured
    rep = report_of(scenario, "seamless-sandboxed.service")
    assert rep["outcome"] == "restarted" and "own mount namespace" in rep["reason"]
