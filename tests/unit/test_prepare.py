"""seamless-restore.service (restore-prepare): the connections held, READY=1, then a verdict per unit.

The order is what keeps a connection: no segment may reach the new kernel
before its lock (READY=1 lets the network up), and a restore that starts at
READY=1 waits for its own unit's verdict. Run against a generation directory
of its own, a real NOTIFY_SOCKET, and checks that take the time given them.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from seamless_systemd import restore, state, systemd

GEN = "20261207T120000-abcdef"
PEER = ["10.0.2.15", 7796, "10.0.2.2", 40000]


@pytest.fixture
def boot(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """A restore boot of three units: web (a connection, bad images), db (a connection), cache (none)."""
    gen = state.Generation(tmp_path / "pmem", GEN)
    units = {
        "web.service": [PEER],
        "db.service": [["10.0.2.15", 5432, "10.0.2.2", 40001]],
        "cache.service": [],
    }
    gen.dir.mkdir(parents=True)
    state.write_json(gen.manifest, {"generation": GEN, "units": list(units)})
    for unit, conns in units.items():
        gen.images(unit).mkdir(parents=True)
        state.write_json(gen.dump_info(unit), {"tcp_connections": conns})
        gen.complete(unit).write_text("")
    run = tmp_path / "run"
    monkeypatch.setattr(state, "RESTORE_DIR", run)
    monkeypatch.setattr(restore, "CHECKING", run / "checking")
    monkeypatch.setattr(restore, "CGROUP2_OPTIONS", run / "cgroup2-options")
    monkeypatch.setattr(restore, "current_generation", lambda: gen)
    monkeypatch.setattr(restore.criu, "start_kernel_probe", lambda: None)
    monkeypatch.setattr(restore.sandbox, "cgroup2_options", lambda: "rw")
    monkeypatch.setattr(restore.inflight, "arrived", lambda g: None)
    monkeypatch.setattr(systemd, "daemon_reload", lambda: events.append(("reload", "")))
    events: list[tuple[str, str]] = []
    checked = {"web.service": "images damaged: checksum mismatch in pages-1.img"}

    def verify(g: state.Generation, unit: str, pages: bool = True) -> str | None:
        time.sleep({"web.service": 0.4, "db.service": 0.2, "cache.service": 0.0}[unit])
        events.append(("verdict due", unit))
        return checked.get(unit)

    monkeypatch.setattr(restore, "verify_unit", verify)
    monkeypatch.setattr(
        restore.netlock, "lock", lambda unit, conns: events.append(("lock", unit)) or len(conns)
    )
    monkeypatch.setattr(restore.netlock, "unlock", lambda unit: events.append(("unlock", unit)))
    real_write = restore._write_verdict
    monkeypatch.setattr(
        restore, "_write_verdict", lambda u, v: (events.append(("verdict", u)), real_write(u, v))
    )
    real_notify = systemd.notify
    monkeypatch.setattr(systemd, "notify", lambda m: (events.append(("notify", m)), real_notify(m)))
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(tmp_path / "notify"))
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "notify"))
    yield {"gen": gen, "events": events, "sock": sock, "run": run}
    sock.close()


def received(sock: socket.socket) -> list[str]:
    sock.setblocking(False)
    out = []
    while True:
        try:
            out.append(sock.recv(4096).decode())
        except BlockingIOError:
            return out


def test_the_connections_are_held_before_ready_and_each_verdict_comes_as_it_is_known(
    boot: dict[str, Any],
) -> None:
    assert restore.prepare() == 0
    events, run, gen = boot["events"], boot["run"], boot["gen"]
    ready = events.index(("notify", "READY=1"))
    # Both units with connections locked, and before systemd heard READY=1.
    assert sorted(u for e, u in events[:ready] if e == "lock") == ["db.service", "web.service"]
    assert not [e for e in events[:ready] if e[0] == "verdict due"]
    # The checks after READY=1, each verdict written as its check ends: db's (0.2 s) is there
    # before web's check (0.4 s) is over, so db's restore does not wait for web's.
    assert events.index(("verdict", "db.service")) < events.index(("verdict due", "web.service"))
    assert {u for e, u in events if e == "verdict"} == {"cache.service", "db.service", "web.service"}
    assert (run / "cache.service.verdict").read_text().startswith("ok")
    assert (run / "db.service.verdict").read_text().startswith("ok")
    assert (
        run / "web.service.verdict"
    ).read_text() == "bad: images damaged: checksum mismatch in pages-1.img\n"
    # The bad unit's peers are let go (its chain removed), the good one's stay held.
    assert [u for e, u in events if e == "unlock"] == ["web.service"]
    assert json.loads(gen.restore_info("web.service").read_text())["outcome"] == "cold-started"
    assert ("reload", "") in events  # its drop-in goes: a start job not yet begun starts it afresh
    assert not (run / "checking").exists()
    got = received(boot["sock"])
    assert got[0] == "READY=1" and got[1].startswith("STATUS=Checking the images of 3 unit(s)"), got
    record = json.loads(gen.boot.read_text())
    assert set(record["verify_seconds"]) == {"web.service", "db.service", "cache.service"}
    assert record["ready_at"] <= record["prepare_finished_at"]


def test_a_restore_waits_for_its_own_verdict_while_the_checks_run(boot: dict[str, Any]) -> None:
    prepare = threading.Thread(target=restore.prepare)
    prepare.start()
    while not (boot["run"] / "checking").exists():
        time.sleep(0.01)
    t0 = time.monotonic()
    assert restore.await_verdict("db.service", timeout=10) is not None
    waited_db = time.monotonic() - t0
    assert restore.await_verdict("web.service", timeout=10) == (
        "bad: images damaged: checksum mismatch in pages-1.img"
    )
    prepare.join()
    # db's verdict came with its own check (0.2 s), not with web's (0.4 s).
    assert 0.1 < waited_db < 0.38, waited_db


def test_no_verdict_is_waited_for_once_the_checks_are_over_or_their_service_died(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(state, "RESTORE_DIR", tmp_path)
    monkeypatch.setattr(restore, "CHECKING", tmp_path / "checking")
    assert restore.await_verdict("x.service", timeout=5) is None  # never started: at once
    dead = subprocess.Popen(["true"])
    dead.wait()
    (tmp_path / "checking").write_text(f"{dead.pid}\n")
    t0 = time.monotonic()
    assert restore.await_verdict("x.service", timeout=5) is None  # it died without a verdict
    assert time.monotonic() - t0 < 1
    (tmp_path / "checking").write_text(f"{os.getpid()}\n")
    t0 = time.monotonic()
    assert restore.await_verdict("x.service", timeout=0.3) is None  # still running: up to the limit
    assert time.monotonic() - t0 >= 0.3


def test_ready_is_sent_on_every_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    sent: list[str] = []
    monkeypatch.setattr(systemd, "notify", sent.append)
    monkeypatch.setattr(restore, "CHECKING", tmp_path / "checking")
    monkeypatch.setattr(restore, "current_generation", lambda: None)
    assert restore.prepare() == 0
    assert sent == ["READY=1"]

    def broken() -> None:
        raise OSError("the images' file system went away")

    sent.clear()
    monkeypatch.setattr(restore, "current_generation", broken)
    with pytest.raises(OSError):
        restore.prepare()
    assert sent == ["READY=1"]
