"""Plain-Python parts of keeping files and sockets: tmpfs files, /proc/net parsing, lock names."""

from __future__ import annotations

import mmap
import os
import shutil
import socket
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from seamless_systemd import netlock, sandbox, sockets, volatile
from seamless_systemd.errors import SeamlessError

SHM = Path("/dev/shm")


@pytest.fixture
def shm_dir() -> Iterator[Path]:
    if not any(mp == str(SHM) for mp in volatile.volatile_devices().values()):
        pytest.skip("/dev/shm is not a tmpfs here")
    d = SHM / f"seamless-unit-{uuid.uuid4().hex[:8]}"
    d.mkdir()
    yield d
    shutil.rmtree(d, ignore_errors=True)


def test_tmpfs_files_found_carried_and_put_back(shm_dir: Path, tmp_path: Path) -> None:
    opened = shm_dir / "state" / "open.txt"
    opened.parent.mkdir(mode=0o750)
    opened.write_text("kept\n")
    os.chmod(opened, 0o640)
    mapped = shm_dir / "segment"
    mapped.write_bytes(b"\0" * 4096)
    deleted = tmp_path / "gone.bin"
    deleted.write_bytes(b"x" * 5000)
    on_disk = tmp_path / "disk.txt"
    on_disk.write_text("not tmpfs\n")
    with opened.open(), mapped.open("r+b") as f2, deleted.open(), on_disk.open():
        m = mmap.mmap(f2.fileno(), 4096)
        m[:5] = b"hello"
        deleted.unlink()
        files, deleted_bytes = volatile.find([os.getpid()])
        assert str(opened) in files and str(mapped) in files
        assert str(on_disk) not in files
        assert deleted_bytes >= 5000
        with volatile.Held([str(opened), str(mapped)]) as held:
            m.close()
            shutil.rmtree(shm_dir)  # as systemd removes a RuntimeDirectory= when the tree dies
            entries = held.save(tmp_path / "carried")
    put, kept = volatile.put_back(entries, tmp_path / "carried")
    assert sorted(put) == sorted([str(opened), str(mapped)]) and kept == []
    assert opened.read_text() == "kept\n" and mapped.read_bytes()[:5] == b"hello"
    assert oct(opened.stat().st_mode & 0o777) == "0o640"
    assert oct(opened.parent.stat().st_mode & 0o777) == "0o750"
    # A file that is there again is left alone.
    opened.write_text("new boot\n")
    put, kept = volatile.put_back(entries, tmp_path / "carried")
    assert str(opened) in kept and opened.read_text() == "new boot\n"


def test_proc_net_addresses_decoded() -> None:
    assert sockets.decode_address("0100007F:1F90") == ("127.0.0.1", 8080)
    assert sockets.decode_address("0F02000A:1E6E") == ("10.0.2.15", 7790)
    v6 = "00000000000000000000000001000000:0050"
    assert sockets.decode_address(v6) == ("::1", 80)
    assert sockets.is_loopback("127.0.0.1") and sockets.is_loopback("::1")
    assert not sockets.is_loopback("10.0.2.2")


def test_own_connection_seen_in_proc_net() -> None:
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(1)
    cli = socket.create_connection(srv.getsockname())
    conn, _ = srv.accept()
    try:
        inet = sockets.inet_sockets()
        ino = os.stat(f"/proc/self/fd/{cli.fileno()}").st_ino
        s = inet[ino]
        assert sockets.decode_address(s.local) == cli.getsockname()
        assert sockets.decode_address(s.remote) == srv.getsockname()
        assert not s.listening and inet[os.stat(f"/proc/self/fd/{srv.fileno()}").st_ino].listening
    finally:
        conn.close()
        cli.close()
        srv.close()


def test_lock_chain_names_fit_iptables() -> None:
    names = {netlock.chain(f"very-long-unit-name-{i}@instance.service") for i in range(50)}
    assert len(names) == 50
    assert all(len(n) <= 28 and n.startswith(netlock.CHAIN_PREFIX) for n in names)


def test_sandbox_weaker_only_when_a_path_is_less_restricted() -> None:
    from seamless_systemd import sandbox

    before = [
        ["/", ["ro"]],
        ["/home", ["nodev", "noexec", "nosuid", "ro"]],
        ["/sys", ["nodev", "noexec", "nosuid"]],
        ["/sys/kernel/tracing", ["nodev", "noexec", "nosuid"]],
        ["/var/lib/app", []],
    ]
    same = [list(x) for x in before]
    assert sandbox.weaker_than(before, same) == []
    # tracefs not mounted yet: the path is still under /sys's flags; not weaker.
    assert sandbox.weaker_than(before, [x for x in before if x[0] != "/sys/kernel/tracing"]) == []
    lost_ro = [x if x[0] != "/home" else ["/home", ["nodev", "noexec", "nosuid"]] for x in before]
    assert sandbox.weaker_than(before, lost_ro) == ["/home lost ro"]
    gone = [x for x in before if x[0] != "/home"]
    assert sandbox.weaker_than(before, gone) == ["/home is not mounted and so lost nodev,noexec,nosuid"]
    # An overmount: the last mount on a point is the one that counts.
    assert sandbox.weaker_than(before, [*before, ["/", []]]) == ["/ lost ro"]


def test_remount_env_names_the_restrictive_mounts_with_all_their_options() -> None:
    from seamless_systemd import sandbox

    table = [["/", ["relatime", "ro"]], ["/var/lib/app", ["relatime", "rw"]], ["/home", ["nosuid", "ro"]]]
    assert sandbox.remount_env(table) == {"SEAMLESS_REMOUNT": "/\trelatime,ro\n/home\tnosuid,ro"}


def test_mount_unit_names_as_systemd_escapes_them() -> None:
    from seamless_systemd.systemd import mount_unit_name

    assert mount_unit_name("/") == "-.mount"
    assert mount_unit_name("/run/user/4242") == "run-user-4242.mount"
    assert mount_unit_name("/run/credentials/systemd-sysctl.service/") == (
        "run-credentials-systemd\\x2dsysctl.service.mount"
    )
    assert mount_unit_name("/var/lib/containers/storage/overlay-containers/f7ab/userdata/shm") == (
        "var-lib-containers-storage-overlay\\x2dcontainers-f7ab-userdata-shm.mount"
    )
    assert mount_unit_name("/srv/.hidden/a b") == "srv-.hidden-a\\x20b.mount"
    assert mount_unit_name("/.dotdir") == "\\x2edotdir.mount"  # only a leading dot is escaped


def test_mount_propagation_tags_are_read() -> None:
    from seamless_systemd import procs

    root = next(m for m in procs.mounts("self") if m.point == "/")
    assert all(":" in t or t == "unbindable" for t in root.tags)


def test_runtime_mounts_left_out_with_what_is_below_them(monkeypatch: pytest.MonkeyPatch) -> None:
    """The host's run-time mounts seen in a sandbox are skipped, and so is everything below them."""
    from seamless_systemd import procs, sandbox, systemd

    def m(mid: int, dev: str, root: str, point: str) -> procs.Mount:
        return procs.Mount(mid, dev, root, point, frozenset({"rw"}), "x")

    host = [
        m(1, "254:0", "/", "/"),
        m(2, "0:23", "/", "/run"),
        m(3, "254:0", "/var/lib/ctr/overlay", "/var/lib/ctr/overlay"),
        m(4, "0:42", "/", "/var/lib/ctr/overlay/abc/merged"),  # only in the host: its parent is private
        m(5, "0:51", "/", "/run/user/1000"),
        m(6, "0:60", "/", "/run/credentials/web.service"),
    ]
    inside = [
        m(10, "254:0", "/", "/"),
        m(11, "0:23", "/", "/run"),
        m(12, "254:0", "/usr", "/usr"),  # the sandbox's own read-only bind
        m(13, "254:0", "/var/lib/ctr/overlay", "/var/lib/ctr/overlay"),
        m(14, "0:51", "/", "/run/user/1000"),
        m(15, "0:60", "/", "/run/credentials/web.service"),
    ]
    monkeypatch.setattr(procs, "mounts", lambda pid: host if pid == "self" else inside)
    asked: list[str] = []

    def runtime(points: list[str]) -> set[str]:
        asked.extend(points)
        return {p for p in points if p.startswith(("/var/lib/ctr", "/run/user", "/run/credentials"))}

    monkeypatch.setattr(systemd, "runtime_mounts", runtime)
    skipped = sandbox.runtime_mounts(99, "web.service")
    assert skipped == ["/run/user/1000", "/var/lib/ctr/overlay", "/var/lib/ctr/overlay/abc/merged"]
    # Only the host's mounts seen inside are asked about; never /, the unit's own credentials.
    assert sorted(asked) == ["/run", "/run/user/1000", "/var/lib/ctr/overlay"]


def test_outside_device_found_by_its_number() -> None:
    from seamless_systemd import sandbox

    assert sandbox._device_path("/dev/null", (1, 3)) == "/dev/null"
    assert sandbox._device_path("/null", (1, 3)) == "/dev/null"
    assert sandbox._device_path("/dev/zero", (1, 3)) == "/dev/null"
    assert sandbox._device_path("/null", (4095, 1)) == "/dev/char/4095:1"  # none: the open names it


def reuse_port_listener(port: int = 0) -> socket.socket:
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    s.bind(("127.0.0.1", port))
    s.listen(32)
    return s


def test_port_group_steered_to_the_restored_copy_then_back() -> None:
    """The kernel's own behaviour that TCP socket activation relies on (see restore._socket_unit_inet)."""
    first = reuse_port_listener()  # the .socket unit's socket
    port = first.getsockname()[1]
    second = reuse_port_listener(port)  # CRIU's copy in the restored process
    clients = []
    try:
        sockets.steer_port_group(first, 1)
        clients = [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(20)]
        second.settimeout(5)
        for _ in clients:
            second.accept()[0].close()
        first.setblocking(False)
        with pytest.raises(BlockingIOError):
            first.accept()  # not one connection went to the .socket unit's socket
        second.close()  # the restored process stops: the .socket unit gets the port back
        clients.append(socket.create_connection(("127.0.0.1", port), timeout=5))
        first.settimeout(5)
        first.accept()[0].close()
    finally:
        for c in clients:
            c.close()
        first.close()
        second.close()


@pytest.mark.parametrize(
    ("name", "address", "port", "same"),
    [
        (("127.0.0.1", 7788), "127.0.0.1", 7788, True),
        (("::", 7788, 0, 0), "::", 7788, True),
        (("::ffff:127.0.0.1", 80, 0, 0), "::ffff:127.0.0.1", 80, True),
        (("127.0.0.1", 7788), "127.0.0.1", 7789, False),
        (("0.0.0.0", 7788), "::", 7788, False),
        ("/run/x.sock", "/run/x.sock", 0, False),
    ],
)
def test_socket_names_matched_by_address(name: object, address: str, port: int, same: bool) -> None:
    assert sockets.same_address(name, address, port) is same


def test_udp_port_group_steered_too() -> None:
    def bound(port: int = 0) -> socket.socket:
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        s.bind(("127.0.0.1", port))
        return s

    first = bound()
    port = first.getsockname()[1]
    second = bound(port)
    with first, second, socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
        sockets.steer_port_group(first, 1)
        for i in range(20):
            client.sendto(b"%d" % i, ("127.0.0.1", port))
        second.settimeout(5)
        assert sorted(int(second.recv(16)) for _ in range(20)) == list(range(20))
        first.setblocking(False)
        with pytest.raises(BlockingIOError):
            first.recv(16)


@pytest.mark.parametrize(
    ("proto", "state", "remote", "kind"),
    [
        ("tcp", sockets.TCP_LISTEN, "00000000:0000", "tcp"),
        ("tcp6", 0x01, "0100007F:1F90", ""),  # established
        ("udp", sockets.TCP_CLOSE, "00000000:0000", "udp"),
        ("udp6", 0x01, "0100007F:1F90", ""),  # connected
    ],
)
def test_socket_kinds_a_socket_unit_passes(proto: str, state: int, remote: str, kind: str) -> None:
    assert sockets.InetSocket(1, proto, "0100007F:1E6C", remote, state).kind == kind


@pytest.fixture
def iptables_runs(monkeypatch: pytest.MonkeyPatch) -> list[tuple[list[str], str]]:
    """netlock's iptables runs with their input, noted instead of run (each succeeds)."""
    runs: list[tuple[list[str], str]] = []

    def fake_run(argv: list[str], check: bool = True, input: str | None = None) -> object:
        runs.append((argv, input or ""))
        return subprocess.CompletedProcess(argv, 0, "", "")

    monkeypatch.setattr(netlock, "run", fake_run)
    return runs


def test_lock_rules_match_any_local_address_for_containers(
    iptables_runs: list[tuple[list[str], str]],
) -> None:
    runs = iptables_runs
    n = netlock.lock(
        "web.service", [("0.0.0.0", 8080, "10.0.2.2", 40000), ("10.0.2.15", 7790, "10.0.2.2", 41000)]
    )
    assert n == 2
    name = netlock.chain("web.service")
    assert runs == [
        (
            ["iptables-restore", "-w", "--noflush"],
            f"*filter\n:{name} - [0:0]\n-I INPUT -j {name}\n"
            f"-A {name} -p tcp -s 10.0.2.2 --sport 40000 --dport 8080 -j DROP\n"
            f"-A {name} -p tcp -s 10.0.2.2 --sport 41000 -d 10.0.2.15 --dport 7790 -j DROP\n"
            "COMMIT\n",
        )
    ]


def test_lock_takes_one_run_per_family_and_refuses_what_is_not_an_address(
    iptables_runs: list[tuple[list[str], str]],
) -> None:
    runs = iptables_runs
    conns = [("fd77::1", 7790, "fd77::2", 40000), ("10.0.2.15", 7790, "10.0.2.2", 40001)]
    assert netlock.lock("web.service", [*conns, ("::ffff:10.0.2.15", 7790, "::ffff:10.0.2.2", 40002)]) == 3
    assert [(argv[0], text.count("-j DROP")) for argv, text in runs] == [
        ("ip6tables-restore", 1),
        ("iptables-restore", 2),
    ]
    runs.clear()
    for bad in [("10.0.2.15", 7790, "10.0.2.2\n-F INPUT", 1), ("10.0.2.15", 0, "10.0.2.2", 1)]:
        with pytest.raises(SeamlessError, match="not an address and port"):
            netlock.lock("web.service", [bad])
    assert runs == []


def test_segments_let_through_with_one_iptables_run_per_family(
    iptables_runs: list[tuple[list[str], str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Before the nudge: the chain emptied, once per family the remote peers need, none for loopback."""
    runs = iptables_runs
    monkeypatch.setattr(netlock.shutil, "which", lambda tool: f"/usr/sbin/{tool}")
    conns = [
        ("10.0.2.15", 7790, "10.0.2.2", 40000),
        ("10.0.2.15", 7790, "10.0.2.2", 40001),
        ("127.0.0.1", 7791, "127.0.0.1", 40002),
    ]
    netlock.let_through("web.service", conns)
    assert runs == [(["iptables", "-w", "-F", netlock.chain("web.service")], "")]
    runs.clear()
    netlock.let_through("web.service", [("fd77::1", 7790, "fd77::2", 40000), conns[0]])
    assert [argv[0] for argv, _ in runs] == ["ip6tables", "iptables"]
    runs.clear()
    netlock.let_through("web.service", [conns[2]])
    assert runs == []


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("unshare") is None, reason="needs root and unshare")
def test_outside_files_are_host_files_not_memfds(tmp_path: Path) -> None:
    """A file opened before the namespace was made is outside; a memfd (no namespace's) is not."""
    import subprocess
    import sys

    held = tmp_path / "opened-outside"
    with held.open("w") as f:
        code = "import os, time\nfd = os.memfd_create('probe')\nprint('ready', flush=True)\ntime.sleep(60)\n"
        child = subprocess.Popen(
            ["unshare", "--mount", "--propagation", "private", sys.executable, "-c", code],
            pass_fds=[f.fileno()],
            stdout=subprocess.PIPE,
            text=True,
        )
    try:
        assert child.stdout is not None and child.stdout.readline().strip() == "ready"
        paths = [e["path"] for e in sandbox.outside_files([child.pid])]
        assert str(held) in paths
        assert not any("memfd:" in p for p in paths), paths
    finally:
        child.kill()
        child.wait()


def test_pid_files_the_tree_wrote_are_found(tmp_path: Path) -> None:
    me = os.getpid()
    (tmp_path / "apache2").mkdir()
    (tmp_path / "apache2/apache2.pid").write_text(f"{me}\n")
    (tmp_path / "haproxy.pid").write_text(f"{me}")
    (tmp_path / "other.pid").write_text("1\n")  # another process's
    (tmp_path / "notes.txt").write_text(f"{me}\n")  # not a PID file
    (tmp_path / "systemd").mkdir()
    (tmp_path / "systemd/x.pid").write_text(f"{me}\n")  # systemd's own directory is not looked at
    deep = tmp_path / "a/b/c"
    deep.mkdir(parents=True)
    (deep / "deep.pid").write_text(f"{me}\n")  # too deep
    found = volatile.pid_files([me], tmp_path)
    assert found == [str(tmp_path / "apache2/apache2.pid"), str(tmp_path / "haproxy.pid")]


def test_lock_files_in_the_working_directory_are_found(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """PostgreSQL's postmaster.pid: the PID on its first line, more lines after, in the data directory."""
    me = os.getpid()
    (tmp_path / "postmaster.pid").write_text(f"{me}\n/var/lib/postgresql/15/main\n1764633600\n5432\n")
    (tmp_path / "other.pid").write_text("1\n")  # another process's
    (tmp_path / "notes.txt").write_text(f"{me}\n")  # not a PID file
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub/deeper.pid").write_text(f"{me}\n")  # only the directory itself is looked at
    monkeypatch.chdir(tmp_path)
    assert volatile.workdir_pid_files([me]) == [str(tmp_path / "postmaster.pid")]
