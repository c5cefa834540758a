"""podman.py's plain parts, on real processes where they read /proc."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from seamless_systemd import config, podman, procs


def test_cidfile_from_the_run_command_line() -> None:
    run = ["/usr/bin/podman", "run", "--cidfile=/run/web.service.ctr-id", "--rm", "-d", "img"]
    assert podman.cidfile(run) == "/run/web.service.ctr-id"
    assert podman.cidfile(["podman", "run", "--cidfile", "/run/x.cid", "img"]) == "/run/x.cid"
    assert podman.cidfile(["podman", "run", "img", "--cidfile"]) == ""
    assert podman.cidfile(["podman", "start", "web"]) == ""


@pytest.fixture
def fake_conmon(tmp_path: Path) -> Iterator[subprocess.Popen[bytes]]:
    """A real process named conmon whose arguments name a container, as podman's conmon's do."""
    exe = tmp_path / "conmon"  # a script: the kernel names the process after it
    exe.write_text("#!/bin/sh\nsleep 30\n")
    exe.chmod(0o755)
    p = subprocess.Popen([str(exe), "--api-version", "1", "-c", "abc123", "-n", "web"])
    deadline = time.time() + 5
    while procs.comm(p.pid) != "conmon" and time.time() < deadline:
        time.sleep(0.05)
    yield p
    p.kill()
    p.wait()


def test_conmon_is_recognised_by_name_and_cid(fake_conmon: subprocess.Popen[bytes]) -> None:
    assert procs.comm(fake_conmon.pid) == "conmon"
    assert podman.conmon_container_id(fake_conmon.pid) == "abc123"


def test_other_processes_are_not_containers() -> None:
    with subprocess.Popen(["sleep", "30"]) as p:
        try:
            assert podman.conmon_container_id(p.pid) is None
            assert podman.of_unit(p.pid) is None
        finally:
            p.kill()


def test_unit_of_pid_reads_the_cgroup(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "7").mkdir()
    (tmp_path / "7" / "cgroup").write_text("0::/machine.slice/libpod-abc.scope/container\n")
    (tmp_path / "8").mkdir()
    (tmp_path / "8" / "cgroup").write_text("0::/system.slice/web.service\n")
    (tmp_path / "9").mkdir()
    (tmp_path / "9" / "cgroup").write_text("0::/\n")
    monkeypatch.setattr(procs, "PROC", tmp_path)
    assert podman.unit_of_pid(7) == "libpod-abc.scope"
    assert podman.unit_of_pid(8) == "web.service"
    assert podman.unit_of_pid(9) == ""
    assert podman.unit_of_pid(10) == ""


def test_container_names_match_config_rules() -> None:
    assert config.check_container_name("web-1.prod") is None
    assert config.check_container_name("-web") is not None


def test_container_without_rm_is_found_before_the_upgrade(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # No such process here: its connections are none, whatever this machine's PID 100 is
    # (a thread of a process with TCP connections made this test fail).
    monkeypatch.setattr(procs, "PROC", tmp_path)
    kept = podman.Container("c0ffee", "web", True, 100, 99, "runc", auto_remove=True)
    left = podman.Container("c0ffee", "web", True, 100, 99, "runc", auto_remove=False)
    assert podman.problems(kept) == []
    (why,) = podman.problems(left)
    assert "without --rm" in why and "'podman generate systemd --new'" in why


def test_published_tcp_ports_read_from_inspect() -> None:
    settings = {
        "Ports": {
            "7792/tcp": [{"HostIp": "", "HostPort": "7792"}, {"HostIp": "::", "HostPort": "7792"}],
            "53/udp": [{"HostIp": "", "HostPort": "5353"}],
            "80/tcp": [{"HostIp": "", "HostPort": "8080"}],
            "9000/tcp": None,  # exposed, not published
        }
    }
    assert podman._published(settings) == ((80, 8080), (7792, 7792))
    assert podman._published({"Ports": None}) == ()


def test_container_connections_locked_on_the_host_port() -> None:
    c = podman.Container("c0ffee", "web", True, 100, 99, "runc", ports=((80, 8080),))
    conns = [("10.88.0.2", 80, "10.0.2.2", 40000), ("10.88.0.2", 5432, "10.88.0.1", 41000)]
    assert podman.host_side(c, conns) == [("0.0.0.0", 8080, "10.0.2.2", 40000)]
