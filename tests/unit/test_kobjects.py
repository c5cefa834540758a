"""Kernel objects CRIU cannot checkpoint, found on real processes of this host; CRIU's errors in words."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from seamless_systemd import criu, kobjects
from seamless_systemd.errors import CommandError
from tests.unit.test_inspect import Spawn, spawn, unit_for  # noqa: F401  (spawn: a fixture)

IO_URING = """
import ctypes, mmap
libc = ctypes.CDLL(None, use_errno=True)
params = ctypes.create_string_buffer(120)
ring = libc.syscall(425, 4, params)  # io_uring_setup(4 entries)
assert ring >= 0, ctypes.get_errno()
MAP = {map}
if MAP:
    m = mmap.mmap(ring, 4096, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE, offset=0)
"""


def _io_uring_works() -> bool:
    try:
        return Path("/proc/sys/kernel/io_uring_disabled").read_text().strip() == "0"
    except OSError:
        return False


needs_io_uring = pytest.mark.skipif(not _io_uring_works(), reason="io_uring is disabled on this kernel")


@needs_io_uring
@pytest.mark.parametrize("mapped", [True, False])
def test_io_uring_is_found_from_its_fd_or_its_mapping(spawn: Spawn, mapped: bool) -> None:  # noqa: F811
    pid = spawn(IO_URING.format(map=mapped))
    (why,) = kobjects.problems([pid], (4, 1, 1))
    assert why.startswith(f"uses io_uring (asynchronous I/O rings) in process {pid} (python")
    assert "CRIU cannot checkpoint" in why
    # And plan's inspection reports it for the unit, by name.
    facts = criu.inspect(unit_for(pid, "db.service"))
    assert any(u.startswith("db.service uses io_uring") for u in facts.unsupported), facts.unsupported


@needs_io_uring
def test_mariadb_gets_its_own_fix(spawn: Spawn, tmp_path: Path) -> None:  # noqa: F811
    # The same object in a process named like MariaDB's server.
    pid = spawn(IO_URING.format(map=True) + "\nopen('/proc/self/comm', 'w').write('mariadbd')\n")
    (why,) = kobjects.problems([pid], (4, 1, 1))
    assert "innodb_use_native_aio = 0" in why and "(mariadbd)" in why


def test_objects_criu_dumps_are_not_reported(spawn: Spawn) -> None:  # noqa: F811
    pid = spawn("import os, select, signal\ne = os.eventfd(0)\np = select.epoll()\n")
    assert kobjects.problems([pid], (4, 1, 1)) == []


def test_pidfd_depends_on_the_criu_version(spawn: Spawn) -> None:  # noqa: F811
    pid = spawn("import os\nfd = os.pidfd_open(os.getpid())\n")
    assert kobjects.problems([pid], (4, 1, 1)) == []
    (why,) = kobjects.problems([pid], (3, 17, 1))
    assert "pidfds" in why and "CRIU keeps from 4.0 on (this one: 3.17.1)" in why


@pytest.mark.parametrize(
    ("line", "says"),
    [
        (
            "(00.051) Error (criu/proc_parse.c:479): Unknown shit 600 (anon_inode:[io_uring])",
            "it maps a kernel object CRIU cannot checkpoint ([io_uring])",
        ),
        (
            "(00.01) Error (criu/namespaces.c:1021): One or more namespaces doesn't belong to the target "
            "user namespace",
            "it runs in its own user namespace (PrivateUsers=), which CRIU cannot dump",
        ),
        ("(00.4) 1: Error (criu/cr-restore.c:1489): Can't fork for 4711: File exists", "PID 4711 is taken"),
        ("(00.2) Error (criu/files.c:90): Something new went wrong", "Something new went wrong"),
    ],
)
def test_criu_errors_in_words(tmp_path: Path, line: str, says: str) -> None:
    log = tmp_path / "dump.log"
    log.write_text(f"(00.000) Version: 4.1.1\n{line}\n(00.3) Error (criu/cr-dump.c:2100): Dumping FAILED.\n")
    why = kobjects.explain(log)
    assert why.startswith(says) and why.endswith(f"(CRIU's log: {log})"), why
    assert "Dumping FAILED" not in why


def test_no_log_is_said_so(tmp_path: Path) -> None:
    assert "left no log" in kobjects.explain(tmp_path / "missing.log")
    assert criu.failed("restore", tmp_path / "missing.log").startswith("criu restore failed: it left no log")


def test_a_failed_dump_is_explained_and_its_log_goes_to_the_journal(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    log = tmp_path / "dump.log"
    log.write_text("(00.05) Error (criu/proc_parse.c:479): Unknown shit 600 (anon_inode:[io_uring])\n")
    monkeypatch.setattr("seamless_systemd.log.journal.propagate", True)
    with caplog.at_level("ERROR", logger="seamless.journal"):
        why = criu.failed("dump", log)
    assert why.startswith("criu dump failed: it maps a kernel object CRIU cannot checkpoint ([io_uring])")
    assert "Unknown shit" not in why
    assert any("Unknown shit 600" in r.getMessage() for r in caplog.records)
    assert os.fspath(log) in why


HUGE = """
import mmap, ctypes
libc = ctypes.CDLL(None, use_errno=True)
libc.mmap.restype = ctypes.c_void_p
C = ctypes
libc.mmap.argtypes = [C.c_void_p, C.c_size_t, C.c_int, C.c_int, C.c_int, C.c_long]
# Address space only (PROT_NONE, no reserve), as a buffer pool reserves it.
addr = libc.mmap(None, {size}, 0, mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | 0x4000, -1, 0)
assert addr not in (None, ctypes.c_void_p(-1).value), ctypes.get_errno()
"""


def test_a_mapping_whose_page_map_outgrows_the_machine_is_refused(spawn: Spawn) -> None:  # noqa: F811
    from seamless_systemd import procs

    # CRIU's buffer is 8 bytes per page: reserve twice what that buffer could get.
    size = (procs.meminfo("MemAvailable") // 8 * 4096) * 2 // (1 << 30) << 30
    pid = spawn(HUGE.format(size=size))
    assert procs.longest_mapping(pid)[0] >= size
    (why,) = criu._mapping_problems([pid])
    assert why.startswith(f"process {pid} (python") and "of anonymous memory" in why
    assert "CRIU reads its page map in one buffer" in why


def test_an_ordinary_process_has_no_mapping_problem(spawn: Spawn) -> None:  # noqa: F811
    pid = spawn(HUGE.format(size=1 << 30))  # 1 GiB reserved: a 2 MiB buffer
    assert criu._mapping_problems([pid]) == []


def test_a_criu_killed_midway_or_past_its_limit_is_said_so(tmp_path: Path) -> None:
    log = tmp_path / "restore.log"
    log.write_text("(00.1) Restoring memory of 4711\n")
    killed = criu.failed("restore", log, CommandError(["criu"], -9, "", ""), 300)
    assert killed == f"criu restore was killed (SIGKILL) before it finished (CRIU's log: {log})"
    late = criu.failed("dump", log, CommandError(["criu"], -1, "", "timed out after 120 s"), 120)
    assert late.startswith("criu dump did not finish within 120 s and was stopped"), late


def test_criu_probes_the_kernel_with_its_own_tmp_when_tmp_is_full(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = tmp_path / "criu.kdat"
    monkeypatch.setattr(criu, "KERNDAT_CACHES", (cache,))
    ran: list[list[str]] = []
    monkeypatch.setattr(criu, "run", lambda argv, **kw: ran.append(list(argv)) or cache.write_bytes(b"k"))

    # /tmp takes a directory: CRIU probes for itself.
    def makes(**kw: object) -> str:
        (tmp_path / "d").mkdir()
        return str(tmp_path / "d")

    monkeypatch.setattr(criu.tempfile, "mkdtemp", makes)
    criu.probe_kernel()
    assert ran == [] and not (tmp_path / "d").exists()

    def full(**kw: object) -> str:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(criu.tempfile, "mkdtemp", full)
    criu.probe_kernel()
    assert ran and ran[0][:4] == ["unshare", "--mount", "--propagation", "private"], ran
    assert "mount -t tmpfs" in ran[0][6] and ran[0][-1] == criu.CRIU
    # Once probed (the cache on /run), never again.
    criu.probe_kernel()
    assert len(ran) == 1
