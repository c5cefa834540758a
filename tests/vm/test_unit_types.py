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
    "seamless-resources.service",
    "seamless-sockact.service",
    "seamless-sockact-tcp.service",
    "seamless-sockact-udp.service",
    "seamless-chat.service",
    "seamless-sandboxed-rw.service",
    "seamless-sandboxed.service",
    "seamless-dynamic.service",
    "seamless-sysv.service",
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


@pytest.mark.fault(
    "a dumped unit with OnFailure= and Restart=",
    "the checkpoint is a clean stop: OnFailure= never ran, no failed state",
)
def test_the_checkpoint_is_a_clean_stop_to_systemd(scenario: vm.Scenario) -> None:
    """seamless-exec has OnFailure= and Restart=on-failure: the checkpoint's SIGKILL must trigger neither."""
    seen = need(scenario, "stop-was-clean")
    prev = "\n".join(seen["previous_boot"])
    # The shutdown of the boot before is in the journal (else this test would prove nothing) ...
    assert "Stopped seamless-exec.service" in prev or "Deactivated successfully" in prev, prev
    # ... and systemd saw no failure there, so the alert never ran.
    assert "Failed with result" not in prev and "Main process exited, code=killed" not in prev, prev
    assert seen["on_failure_log"] is None, seen["on_failure_log"]
    after = need(scenario, "types-after")["seamless-exec.service"]
    assert (after["ActiveState"], after["NRestarts"]) == ("active", "0")


def test_oneshot_is_active_again(scenario: vm.Scenario) -> None:
    before = need(scenario, "types-before")["seamless-oneshot.service"]
    after = need(scenario, "types-after")["seamless-oneshot.service"]
    assert before["ActiveState"] == after["ActiveState"] == "active"
    assert after["stamp"] and after["stamp"] != before["stamp"]  # it ran again in the new boot
    assert report_of(scenario, "seamless-oneshot.service")["outcome"] == "rerun"


def assert_same_sandbox(before: dict[str, Any], after: dict[str, Any], skipped: list[str]) -> None:
    assert {k: v for k, v in after.items() if k != "mount_points"} == {
        k: v for k, v in before.items() if k != "mount_points"
    }
    # Every mount is back, except what the host mounted after the unit started and
    # propagated into it: tracefs (the restored namespace no longer receives it) and
    # the host's run-time mounts the checkpoint left out (the container's, started later).
    assert set(before["mount_points"]) - set(after["mount_points"]) <= {"/sys/kernel/tracing", *skipped}
    assert any(p.startswith("/var/lib/containers/") for p in skipped), skipped


def test_inaccessible_paths_stay_inaccessible(scenario: vm.Scenario) -> None:
    """ProtectHome=: CRIU 3.17 alone would bring /home back writable; the restore keeps it read-only."""
    before = need(scenario, "types-before")["seamless-sandboxed.service"]["reply"]["sandbox"]
    after = need(scenario, "types-after")["seamless-sandboxed.service"]["reply"]["sandbox"]
    assert before["own_mnt_ns"] and not before["writable"]["/home"]
    assert not before["writable"]["/run/credentials"]
    assert_same_sandbox(before, after, report_of(scenario, "seamless-sandboxed.service")["skipped_mounts"])


def test_sandbox_kept_whole(scenario: vm.Scenario) -> None:
    """PrivateTmp=, ProtectSystem=strict, PrivateDevices=, ReadWritePaths=: restored in the same sandbox."""
    before = need(scenario, "types-before")["seamless-sandboxed-rw.service"]["reply"]["sandbox"]
    after = need(scenario, "types-after")["seamless-sandboxed-rw.service"]["reply"]["sandbox"]
    writable = {
        k: v for k, v in before["writable"].items() if k in ("/usr", "/etc", "/var/lib/seamless-sbx", "/tmp")
    }
    assert before["own_mnt_ns"] and writable == {
        "/usr": False,
        "/etc": False,
        "/var/lib/seamless-sbx": True,
        "/tmp": True,
    }
    assert "vda" not in before["devices"]  # PrivateDevices=
    assert before["tmp_note"].startswith("written before the upgrade")  # its private /tmp came along
    assert_same_sandbox(before, after, report_of(scenario, "seamless-sandboxed-rw.service")["skipped_mounts"])


def test_dynamic_user_hardened_unit_kept(scenario: vm.Scenario) -> None:
    """DynamicUser=, NoNewPrivileges=, SystemCallFilter=: same user, flag and filter after the restore."""
    before = need(scenario, "types-before")["seamless-dynamic.service"]["reply"]["sandbox"]
    after = need(scenario, "types-after")["seamless-dynamic.service"]["reply"]["sandbox"]
    uid = int(before["uid_gid"][0].split()[0])
    assert 61184 <= uid <= 65519  # a dynamic user's range
    assert (before["no_new_privs"], before["seccomp"]) == ("1", "2")
    assert before["writable"]["/var/lib/seamless-dyn"] and not before["writable"]["/usr"]
    assert before["tmp_note"].startswith("written before the upgrade")  # its private /tmp
    assert_same_sandbox(before, after, report_of(scenario, "seamless-dynamic.service")["skipped_mounts"])


def test_kernel_objects_come_back(scenario: vm.Scenario) -> None:
    before, after = need(scenario, "resources-before"), need(scenario, "resources-after")
    b, a = before["reply"], after["reply"]
    same = ["plain", "memfd", "shm_posix", "run_file", "eventfd", "timerfd_interval", "creds", "udp"]
    for key in [*same, "counter", "started_at", "main_pid"]:
        assert a[key] == b[key], key
    assert b["plain"]["offset"] == 1234 and b["eventfd"] == 42 and b["timerfd_interval"] == [1, 0]
    assert a["deleted"]["sha"] == b["deleted"]["sha"]
    assert a["deleted"]["link"].endswith("(deleted)")  # still deleted, still open
    assert a["itimer"][1] == b["itimer"][1] == 0.5  # the interval timer still runs
    assert a["alarms"] > b["alarms"] and a["timer_ticks"] > b["timer_ticks"]
    assert (b["usr1"], a["usr1"]) == (1, 2)  # the signalfd still gets SIGUSR1
    assert b["inotify_names"] == ["before.txt"]
    assert a["inotify_names"] == ["before.txt", "after.txt"]  # the inotify watch is still there
    assert a["kernel"] != b["kernel"]


def test_locks_held_by_the_same_processes(scenario: vm.Scenario) -> None:
    before, after = need(scenario, "resources-before"), need(scenario, "resources-after")
    assert [x["type"] for x in before["locks"]] == ["FLOCK", "POSIX"]
    assert after["locks"] == before["locks"]


def test_same_user_and_groups(scenario: vm.Scenario) -> None:
    before = need(scenario, "resources-before")["reply"]["creds"]
    after = need(scenario, "resources-after")["reply"]["creds"]
    assert after == before
    assert before["uids"][0] != 0 and len(set(before["uids"])) == 1  # User=seamless-res
    assert 4 in before["groups"]  # SupplementaryGroups=adm
    assert before["CapEff"] == "0000000000000000"


def test_tmpfs_files_carried_across(scenario: vm.Scenario) -> None:
    before, after = need(scenario, "resources-before"), need(scenario, "resources-after")
    assert after["shm_file"] == before["shm_file"] == {"exists": True, "owner": "seamless-res"}
    assert after["run_file"] == before["run_file"]
    assert before["run_file"]["content"] == "written in the first boot\n"


def test_socket_activated_unit_keeps_its_socket(scenario: vm.Scenario) -> None:
    before = need(scenario, "types-before")["seamless-sockact.service"]
    again = need(scenario, "sockact-again")
    assert again["socket"] == "active"
    # Stopped after the restore, the service is started afresh by its socket: the socket still works.
    assert again["reply"]["counter"] == 0 and again["reply"]["main_pid"] != int(before["MainPID"])


@pytest.mark.parametrize("kind", ["tcp", "udp"])
def test_inet_socket_activated_unit_keeps_its_port(scenario: vm.Scenario, kind: str) -> None:
    """Every new client reaches the restored service, after one upgrade and after two."""
    before = need(scenario, "types-before")[f"seamless-sockact-{kind}.service"]
    # 20 clients in a row, each answered at once by the restored process (none left
    # waiting in the .socket unit's own queue, which nobody reads while it runs).
    for seen in (need(scenario, f"sockact-{kind}"), need(scenario, f"sockact-{kind}-again")["clients"]):
        assert seen["socket"] == "active"
        assert seen["answered"] == 20 and seen["pids"] == [int(before["MainPID"])], seen
        assert seen["counter"] == before["reply"]["counter"] == 2


@pytest.mark.parametrize("kind", ["tcp", "udp"])
def test_inet_socket_unit_starts_the_service_again(scenario: vm.Scenario, kind: str) -> None:
    """Stopped after the restore, the service is started afresh by its .socket unit, on the same port."""
    before = need(scenario, "types-before")[f"seamless-sockact-{kind}.service"]
    again = need(scenario, f"sockact-{kind}-again")
    assert again["socket"] == "active"
    assert again["reply"]["counter"] == 0 and again["reply"]["main_pid"] != int(before["MainPID"])


def test_sysv_shm_in_host_ipc_namespace_kept(scenario: vm.Scenario) -> None:
    """Its System V segments come back in the new boot: ids, keys, modes, owners and contents."""
    before = need(scenario, "types-before")["seamless-sysv.service"]
    after = need(scenario, "types-after")["seamless-sysv.service"]
    b, a = before["reply"], after["reply"]
    assert b["counter"] == 2 and len(b["shm_sysv"]) == 2
    assert a["counter"] == 2 and a["main_pid"] == b["main_pid"] and a["kernel"] != b["kernel"]
    assert a["shm_sysv"] == b["shm_sysv"]  # the same bytes
    assert a["shm_sysv_table"] == b["shm_sysv_table"], (b["shm_sysv_table"], a["shm_sysv_table"])
    assert a["ipc_ns"] == "ipc:[4026531839]"  # the host's (the initial IPC namespace)
    assert report_of(scenario, "seamless-sysv.service")["outcome"] == "restored"


def host_client_replies(sc: vm.Scenario, target: str) -> tuple[dict[str, Any], ...]:
    """What the host's TCP client TARGET got: two replies before the upgrade, one after, on one connection."""
    host = [e.data for e in sc.events if e.name == "tcp-host" and e.data.get("target") == target]
    assert len(host) == 2, host
    first, second = host
    assert "error" not in first and "error" not in second, host
    (a1, a2), (b1,) = first["replies"], second["replies"]
    assert [a1["lines"], a2["lines"], b1["lines"]] == [1, 2, 3]  # on the same connection
    assert a2["kernel"] != b1["kernel"] and b1["pid"] == a2["pid"]
    return a1, a2, b1


def test_kernel_rules_behind_the_private_users_refusal(scenario: vm.Scenario) -> None:
    """On the new kernel too: no chosen PID from a user namespace, no entering one with threads."""
    rules = need(scenario, "userns-rules")
    assert rules["kernel"].startswith("6.1.0-53"), rules
    assert rules["threaded_unshare"] == "EINVAL" and rules["ns_last_pid"] == "EPERM", rules


def test_private_ipc_namespace_restarted_by_policy(scenario: vm.Scenario) -> None:
    """PrivateIPC=yes is found at plan time (its restore failed with CRIU 4.1.1); the policy restarts it."""
    assert "runs in its own IPC namespace (PrivateIPC=)" in need(scenario, "plan")["out"]
    after = need(scenario, "types-after")["seamless-sysv-private.service"]
    assert after["ActiveState"] == "active" and after["reply"]["counter"] == 0
    assert report_of(scenario, "seamless-sysv-private.service")["outcome"] == "restarted"


def test_tcp_connection_from_outside_survives(scenario: vm.Scenario) -> None:
    """A client outside the VM keeps its connection across the upgrade and gets right answers."""
    a1, a2, b1 = host_client_replies(scenario, "chat")
    assert [a1["counter"], a2["counter"], b1["counter"]] == [1, 2, 3]  # the state went on
    after = need(scenario, "tcp-after")
    assert after["connections"][b1["peer"]] == 3
    # QEMU's user network never offers window scaling: restore-unit gave the connection its scales back.
    host, port = b1["peer"].rsplit(":", 1)
    repaired = report_of(scenario, "seamless-chat.service")["tcp"]["window_scales_repaired"]
    assert any(c.split()[2:] == [host, port] for c in repaired), repaired


def test_tcp_connection_into_container_survives(scenario: vm.Scenario) -> None:
    """A client outside the VM, connected through the container's published port, keeps its connection."""
    a1, a2, b1 = host_client_replies(scenario, "container")
    assert a1["counter"] == b1["counter"] == 2 and b1["blob_sha256"] == a2["blob_sha256"]
    assert b1["pid"] == 1  # the container's first process
    assert need(scenario, "tcp-ctr-after")["connections"][b1["peer"]] == 3
    assert report_of(scenario, "seamless-podman.service")["outcome"] == "restored"


def test_podman_container_kept(scenario: vm.Scenario) -> None:
    """A podman container (named in 'containers:') comes back with its state, inside its unit."""
    unit = "seamless-podman.service"
    before, after = need(scenario, "types-before"), need(scenario, "types-after")
    b, a = before[unit], after[unit]
    assert a["ActiveState"] == "active" and a["SubState"] == "running", a
    assert a["Type"] == b["Type"] == "notify"  # the restore drop-in is gone again
    assert "50-seamless-restore.conf" not in a["DropInPaths"]
    assert a["NRestarts"] == "0" and a["fresh_starts"] == 0
    br, ar = b["reply"], a["reply"]
    assert br["counter"] == 2
    assert (ar["counter"], ar["blob_sha256"], ar["started_at"]) == (
        br["counter"],
        br["blob_sha256"],
        br["started_at"],
    )
    assert ar["kernel"] != br["kernel"]
    assert ar["pid"] == br["pid"] == 1  # the same first process of the container's PID namespace
    # podman ps: the same container, running; conmon (new, in the unit's cgroup) is the MainPID.
    ctr_before = [c for c in before["podman"] if "looper" in c["names"]]
    ctr_after = [c for c in after["podman"] if "looper" in c["names"]]
    assert len(ctr_before) == len(ctr_after) == 1
    assert ctr_after[0]["id"] == ctr_before[0]["id"] and ctr_after[0]["state"] == "running"
    assert int(a["MainPID"]) in a["pids"]
    assert a["cidfile"] is not None and a["cidfile"].strip() == ctr_after[0]["id"]  # ExecStop= finds it
    rep = report_of(scenario, unit)
    assert rep["outcome"] == "restored" and rep["container"] == "looper"


@pytest.mark.fault(
    "a preserved unit restarted between arm and the kexec",
    "its new tree (new MainPID, new children) is the one dumped and restored",
)
def test_a_unit_restarted_after_arm_is_dumped_as_it_is_then(scenario: vm.Scenario) -> None:
    """seamless-prefork is restarted between the second arm and its kexec: its new tree is kept."""
    r = need(scenario, "restarted-while-armed")
    # (Its children may not be forked yet when the driver looks: the main PID is what counts.)
    assert r["after"] != r["before"] and int(r["after"]) in r["pids"], r
    rep = next(
        u for u in need(scenario, "after2")["report"]["units"] if u["unit"] == "seamless-prefork.service"
    )
    assert rep["outcome"] == "restored", rep
    assert str(rep["main_pid_before"]) == r["after"], rep
    assert rep["main_pid_after"] == rep["main_pid_before"], rep


@pytest.mark.fault(
    "a service grows past the PMEM after arm",
    "its dump is refused before it writes; it starts afresh with the reason; the others are restored",
)
def test_a_unit_that_outgrew_the_pmem_starts_afresh_and_the_others_are_kept(scenario: vm.Scenario) -> None:
    """seamless-grower grows past the whole PMEM after the second arm: refused, and it alone."""
    assert any("grew to 528 MiB" in line for line in need(scenario, "grown")["log"])
    units = {u["unit"]: u for u in need(scenario, "after2")["report"]["units"]}
    grower = units["seamless-grower.service"]
    assert grower["outcome"] == "cold-started", grower
    assert "would need about" in grower["reason"] and "grew since" in grower["reason"], grower
    # The units dumped beside it had their room: none of them was started afresh.
    assert [u for u, r in units.items() if r["outcome"] == "cold-started"] == ["seamless-grower.service"], (
        units
    )


@pytest.mark.parametrize(
    "unit",
    [
        "seamless-podman.service",
        "seamless-sandboxed-rw.service",
        "seamless-dynamic.service",
        "seamless-sockact-tcp.service",
        "seamless-sockact-udp.service",
    ],
)
def test_restored_units_are_preserved_again(scenario: vm.Scenario, unit: str) -> None:
    """The second upgrade (arm + plain systemctl kexec) checkpoints what the first one restored."""
    rep = next(u for u in need(scenario, "after2")["report"]["units"] if u["unit"] == unit)
    assert rep["outcome"] == "restored", rep
