"""The D-Bus API on a bus of its own: a real dbus-daemon, the service as it runs, busctl as the client.

The system bus's policy and polkit are the VM's part (tests/vm/test_upgrade.py);
here the bus lets anyone talk, so the service's own check is what refuses.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

pytest.importorskip("dbus_fast")

from seamless_systemd import cli, config, dbus_service

pytestmark = pytest.mark.skipif(
    shutil.which("dbus-daemon") is None or shutil.which("busctl") is None,
    reason="needs dbus-daemon and busctl",
)

BUS_CONFIG = """<busconfig>
  <type>custom</type>
  <listen>unix:path={path}</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <allow user="*"/>
    <allow own="*"/>
    <allow send_destination="*"/>
    <allow receive_sender="*"/>
  </policy>
</busconfig>
"""


@pytest.fixture
def bus(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[str, Path]]:
    """A dbus-daemon (its socket reachable by nobody too), the service on it; (address, config dir)."""
    from dbus_fast.aio.message_bus import MessageBus

    where = Path(tempfile.mkdtemp(prefix="seamless-bus-"))
    where.chmod(0o755)
    (where / "bus.conf").write_text(BUS_CONFIG.format(path=where / "socket"))
    daemon = subprocess.Popen(
        ["dbus-daemon", f"--config-file={where / 'bus.conf'}", "--nofork", "--nopidfile"]
    )
    for _ in range(100):
        if (where / "socket").exists():
            break
        time.sleep(0.05)
    address = f"unix:path={where / 'socket'}"
    etc = where / "etc"
    etc.mkdir()
    (etc / "config.yaml").write_text("units: [a.service]\n")
    monkeypatch.setattr(config, "DEFAULT_DIR", etc)
    serving = threading.Thread(
        target=lambda: asyncio.run(dbus_service.serve(idle=3.0, bus_factory=lambda: MessageBus(address))),
        daemon=True,
    )
    serving.start()
    try:
        for _ in range(100):
            if busctl(address, "status", dbus_service.NAME).returncode == 0:
                break
            time.sleep(0.05)
        yield address, etc
    finally:
        daemon.terminate()
        daemon.wait()
        serving.join(timeout=10)
        shutil.rmtree(where, ignore_errors=True)


def busctl(address: str, *args: str, user: str | None = None) -> subprocess.CompletedProcess[str]:
    argv = ["busctl", f"--address={address}", "--json=short", *args]
    if user is not None:
        argv = ["runuser", "-u", user, "--", *argv]
    return subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)


def call(address: str, member: str, *args: str, user: str | None = None) -> subprocess.CompletedProcess[str]:
    return busctl(
        address,
        "call",
        dbus_service.NAME,
        dbus_service.PATH,
        dbus_service.INTERFACE,
        member,
        *args,
        user=user,
    )


def test_status_over_the_bus_is_the_clis(
    bus: tuple[str, Path], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    address, etc = bus
    got = call(address, "Status")
    assert got.returncode == 0, got.stderr
    over_bus = json.loads(json.loads(got.stdout)["data"][0])
    monkeypatch.setattr(cli.log, "setup", lambda debug=False: None)
    assert cli.main(["--config-dir", str(etc), "status", "--json"]) == 0
    assert over_bus == json.loads(capsys.readouterr().out)
    assert over_bus["units"] == ["a.service"]


def test_errors_say_what_is_wrong(bus: tuple[str, Path]) -> None:
    address, etc = bus
    (etc / "config.yaml").write_text("units: 3\n")
    got = call(address, "Plan", "s", "")
    assert got.returncode != 0
    assert f"{dbus_service.NAME}.ConfigInvalid" in got.stderr or "'units' must be a list" in got.stderr, (
        got.stderr
    )
    wrong = call(address, "Arm")  # no kernel argument
    assert wrong.returncode != 0 and "Arm takes (s), not ()" in wrong.stderr, wrong.stderr
    shown = busctl(address, "introspect", dbus_service.NAME, dbus_service.PATH)
    assert shown.returncode == 0 and ".Progress" in shown.stdout and ".Plan" in shown.stdout, shown


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("runuser") is None, reason="needs root and runuser")
def test_only_root_may_change_anything_without_polkit(bus: tuple[str, Path]) -> None:
    """No polkit on this bus: the service asks the bus who calls, and refuses anyone but root.

    Nothing is done for root here either but Status: the calls of root would arm this machine.
    """
    address, _ = bus
    for member, args in (("Arm", ("s", "")), ("Run", ("s", "")), ("Disarm", ()), ("Plan", ("s", ""))):
        got = call(address, member, *args, user="nobody")
        # busctl says the error's name in words (org.freedesktop.DBus.Error.AccessDenied).
        assert got.returncode != 0 and "Access denied" in got.stderr, (member, got)
    # Status is for anyone.
    assert call(address, "Status", user="nobody").returncode == 0
