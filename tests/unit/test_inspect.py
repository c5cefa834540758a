"""What plan finds out about a unit's processes, on real processes of this host (no systemd needed)."""

from __future__ import annotations

import dataclasses
import os
import shutil
import socket
import subprocess
import sys
import textwrap
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from seamless_systemd import criu, sockets
from seamless_systemd.errors import CheckpointError
from seamless_systemd.systemd import UnitInfo

Spawn = Callable[[str], int]


def unit_for(pid: int, name: str = "probe.service") -> UnitInfo:
    # No cgroup of its own here: an empty control group has no other processes.
    return UnitInfo(
        name, "loaded", "active", "running", pid, "/nonexistent-seamless-probe", "simple", None, "", "", ""
    )


@pytest.fixture
def spawn() -> Iterator[Spawn]:
    """spawn(CODE) runs CODE in a child Python that prints 'ready' and then sleeps."""
    children: list[subprocess.Popen[str]] = []

    def start(code: str) -> int:
        prog = textwrap.dedent(code) + "\nprint('ready', flush=True)\nimport time\ntime.sleep(60)\n"
        p = subprocess.Popen([sys.executable, "-c", prog], stdout=subprocess.PIPE, text=True)
        children.append(p)
        assert p.stdout is not None and p.stdout.readline().strip() == "ready"
        return p.pid

    yield start
    for p in children:
        p.kill()
        p.wait()


def test_plain_process_has_nothing_unsupported(spawn: Spawn) -> None:
    pid = spawn("x = bytearray(4 << 20)")
    facts = criu.inspect(unit_for(pid))
    assert facts.main_pid == pid and facts.pids == (pid,)
    assert facts.unsupported == ()
    assert facts.memory_bytes >= 4 << 20


def test_not_running_is_an_error() -> None:
    info = unit_for(0)
    with pytest.raises(CheckpointError, match="not running"):
        criu.inspect(info)


@pytest.mark.parametrize("patched", [False, True])
def test_sysv_shm_in_host_ipc_namespace(spawn: Spawn, monkeypatch: pytest.MonkeyPatch, patched: bool) -> None:
    """Refused by a stock CRIU (naming the patch); recorded, to be made again, with --ext-sysv-shm."""
    monkeypatch.setattr(criu, "help_text", lambda: "  --ext-sysv-shm\tallow ..." if patched else "")
    pid = spawn(
        """
        import ctypes
        libc = ctypes.CDLL(None, use_errno=True)
        libc.shmat.restype = ctypes.c_void_p
        shm = libc.shmget(0, ctypes.c_size_t(65536), 0o1000 | 0o600)
        assert shm >= 0
        addr = libc.shmat(shm, None, 0)
        libc.shmctl(shm, 0, None)  # IPC_RMID: gone once detached
        """
    )
    facts = criu.inspect(unit_for(pid))
    refused = [u for u in facts.unsupported if "System V shared memory" in u]
    if patched:
        assert not refused, facts.unsupported
        (seg,) = facts.sysv_segments
        assert seg["size"] == 65536 and seg["removed"] and seg["mode"] == 0o600
    else:
        assert refused and "packaging/criu/0001-ext-sysv-shm.patch" in refused[0]


def test_tcp_connection_recorded(spawn: Spawn) -> None:
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(1)
    port = srv.getsockname()[1]
    pid = spawn(f"import socket\ns = socket.create_connection(('127.0.0.1', {port}))")
    conn, peer = srv.accept()
    try:
        facts = criu.inspect(unit_for(pid))
        assert facts.tcp_connections == (("127.0.0.1", peer[1], "127.0.0.1", port),)
        needs_iptables = [u for u in facts.unsupported if "iptables" in u]
        assert bool(needs_iptables) == (shutil.which("iptables") is None or shutil.which("ip6tables") is None)
    finally:
        conn.close()
        srv.close()


def test_unix_connection_to_outside_reported(spawn: Spawn, tmp_path: Path) -> None:
    path = str(tmp_path / "outside.sock")
    srv = socket.socket(socket.AF_UNIX)
    srv.bind(path)
    srv.listen(1)
    pid = spawn(f"import socket\ns = socket.socket(socket.AF_UNIX)\ns.connect({path!r})")
    conn, _ = srv.accept()
    try:
        facts = criu.inspect(unit_for(pid))
        assert any(f"connected to a unix socket outside the unit ({path})" in u for u in facts.unsupported)
    finally:
        conn.close()
        srv.close()


def test_tmpfs_file_and_device_seen(spawn: Spawn) -> None:
    if not os.path.ismount("/dev/shm"):
        pytest.skip("no /dev/shm here")
    shm = f"/dev/shm/seamless-probe-{uuid.uuid4().hex[:8]}"
    device = "/dev/kmsg" if os.path.exists("/dev/kmsg") else None
    code = f"f = open({shm!r}, 'w')\nf.write('x')\nf.flush()\nn = open('/dev/null')\n"
    if device:
        code += f"d = open({device!r}, 'rb', buffering=0)\n"
    try:
        pid = spawn(code)
        facts = criu.inspect(unit_for(pid))
        assert shm in facts.volatile_files
        devices = [u for u in facts.unsupported if "devices open" in u]
        if device:
            assert len(devices) == 1 and device in devices[0] and "/dev/null" not in devices[0]
        else:
            assert devices == []
    finally:
        if os.path.exists(shm):
            os.unlink(shm)


@pytest.mark.parametrize(("have", "reported"), [((3, 17, 1), True), ((4, 1, 1), False), (None, True)])
def test_no_new_privileges_reported_for_old_criu(
    spawn: Spawn, monkeypatch: pytest.MonkeyPatch, have: tuple[int, ...] | None, reported: bool
) -> None:
    monkeypatch.setattr(criu, "version", lambda: have)
    pid = spawn("import ctypes\nassert ctypes.CDLL(None).prctl(38, 1, 0, 0, 0) == 0  # PR_SET_NO_NEW_PRIVS")
    facts = criu.inspect(unit_for(pid))
    assert any("NoNewPrivileges=" in u and "before 3.19" in u for u in facts.unsupported) is reported


def test_criu_version_read(monkeypatch: pytest.MonkeyPatch) -> None:
    class Out:
        stdout = "Version: 3.17.1\n"

    monkeypatch.setattr(criu, "run", lambda *a, **k: Out())
    assert criu.version.__wrapped__() == (3, 17, 1)
    assert criu.version.__wrapped__() < criu.NO_NEW_PRIVS_KEPT


@pytest.mark.skipif(os.geteuid() != 0, reason="chroot needs root")
def test_listening_socket_bound_before_a_chroot_is_fine(spawn: Spawn, tmp_path: Path) -> None:
    """CRIU looks the name up from the mount namespace's root, not the process's chroot."""
    path = tmp_path / "admin.sock"
    jail = tmp_path / "jail"
    jail.mkdir()
    pid = spawn(
        f"import os, socket\ns = socket.socket(socket.AF_UNIX)\ns.bind({str(path)!r})\ns.listen()\n"
        f"os.chroot({str(jail)!r})\n"
    )
    facts = criu.inspect(unit_for(pid, "lb.service"))
    assert facts.warnings == () and facts.renamed_sockets == ()


def test_listening_socket_whose_file_is_gone_is_warned_of(spawn: Spawn, tmp_path: Path) -> None:
    path = tmp_path / "gone.sock"
    pid = spawn(
        f"import os, socket\ns = socket.socket(socket.AF_UNIX)\ns.bind({str(path)!r})\ns.listen()\n"
        f"os.unlink({str(path)!r})\n"
    )
    facts = criu.inspect(unit_for(pid, "lb.service"))
    (warning,) = facts.warnings
    assert warning.startswith(f"lb.service listens on the unix socket {path}, whose file is gone")
    assert "clients cannot connect to it after the upgrade" in warning
    assert facts.unsupported == ()  # the state is kept: a warning, not a refusal


def test_listening_socket_outside_a_chroot_is_fine(spawn: Spawn, tmp_path: Path) -> None:
    path = tmp_path / "ok.sock"
    pid = spawn(f"import socket\ns = socket.socket(socket.AF_UNIX)\ns.bind({str(path)!r})\ns.listen()\n")
    assert criu.inspect(unit_for(pid)).warnings == ()


def test_socket_renamed_after_bind_is_carried(spawn: Spawn, tmp_path: Path) -> None:
    """haproxy's way: bind to NAME.tmp, then rename the file into place."""
    final = tmp_path / "admin.sock"
    pid = spawn(
        f"import os, socket\ns = socket.socket(socket.AF_UNIX)\ns.bind({str(final)!r} + '.1.tmp')\n"
        f"s.listen()\nos.rename({str(final)!r} + '.1.tmp', {str(final)!r})\n"
    )
    facts = criu.inspect(unit_for(pid))
    assert facts.warnings == ()
    assert facts.renamed_sockets == ((f"{final}.1.tmp", str(final)),)
    # For the dump the old name leads to the socket again, and only for the dump.
    with sockets.bound_names_linked(pid, facts.renamed_sockets):
        assert os.stat(f"{final}.1.tmp").st_ino == os.stat(final).st_ino
    assert not os.path.exists(f"{final}.1.tmp") and final.exists()
    (rec,) = sockets.renamed_records(facts.main_pid, facts.renamed_sockets)
    assert rec["bound"] == f"{final}.1.tmp" and rec["path"] == str(final)


def test_restored_socket_goes_back_to_its_name(tmp_path: Path) -> None:
    run = tmp_path / "run/lb"
    rec = {
        "bound": f"{run}/admin.sock.1.tmp",
        "path": f"{run}/admin.sock",
        "dir_mode": 0o750,
        "dir_uid": os.getuid(),
        "dir_gid": os.getgid(),
    }
    sockets.prepare_renamed([rec])  # the new boot has no such directory yet
    assert run.is_dir() and (run.stat().st_mode & 0o777) == 0o750
    with socket.socket(socket.AF_UNIX) as s:
        s.bind(rec["bound"])  # as CRIU binds it
        assert sockets.rename_restored(os.getpid(), [rec]) == [rec["path"]]
        assert (run / "admin.sock").is_socket() and not Path(rec["bound"]).exists()


def test_pseudo_terminal_with_both_ends_in_the_tree_is_kept(spawn: Spawn) -> None:
    pid = spawn("import os\nmaster, slave = os.openpty()\n")
    assert not any("terminal" in u or "devices" in u for u in criu.inspect(unit_for(pid)).unsupported)


def test_pseudo_terminal_whose_master_is_outside_is_reported(spawn: Spawn) -> None:
    master, slave = os.openpty()
    try:
        name = os.ttyname(slave)
        pid = spawn(f"import os\nfd = os.open({name!r}, os.O_RDWR | os.O_NOCTTY)\n")
        (why,) = [u for u in criu.inspect(unit_for(pid)).unsupported if "terminal" in u]
        assert f"uses the terminal {name}, whose other end is outside the unit" in why
    finally:
        os.close(master)
        os.close(slave)


def test_a_child_in_another_units_cgroup_is_refused(spawn: Spawn, monkeypatch: pytest.MonkeyPatch) -> None:
    """An SSH session pam_systemd moved into session-3.scope: a child of sshd, not ssh.service's."""
    parent = spawn(
        """
        import subprocess, sys
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
        """
    )
    kids = [p for p in criu.procs.tree(parent) if p != parent]
    assert kids
    real = criu.procs.cgroup_of

    def cgroup_of(pid: int) -> str | None:
        if pid in kids:
            return "/user.slice/user-1000.slice/session-3.scope"
        return "/system.slice/ssh.service" if pid == parent else real(pid)

    monkeypatch.setattr(criu.procs, "cgroup_of", cgroup_of)
    info = dataclasses.replace(unit_for(parent, "ssh.service"), control_group="/system.slice/ssh.service")
    (why,) = [u for u in criu.inspect(info).unsupported if "other units" in u]
    assert f"{kids[0]} (python3) in session-3.scope" in why and "logind" in why, why
    # The same tree in a sub-cgroup of its own unit (delegation) is the unit's.
    monkeypatch.setattr(
        criu.procs,
        "cgroup_of",
        lambda pid: "/system.slice/ssh.service/x" if pid in kids else "/system.slice/ssh.service",
    )
    assert not [u for u in criu.inspect(info).unsupported if "other units" in u]
