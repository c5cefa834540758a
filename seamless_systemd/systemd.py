"""What this package asks of systemd (PID 1), over D-Bus with pystemd.

As root we talk to PID 1 on its private socket: it works during shutdown,
after the D-Bus broker may already be gone.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from seamless_systemd.errors import SeamlessError
from seamless_systemd.log import log

PRIVATE_SOCKET = Path("/run/systemd/private")


@dataclasses.dataclass(frozen=True)
class UnitInfo:
    name: str
    load_state: str
    active_state: str
    sub_state: str
    main_pid: int
    control_group: str
    service_type: str
    memory_current: int | None
    syslog_identifier: str
    exec_start: str
    fragment_path: str
    pid_file: str = ""
    # The first ExecStart= command line.
    exec_argv: tuple[str, ...] = ()
    # DynamicUser=: the UID systemd allocated for this run of the unit (None otherwise).
    dynamic_uid: int | None = None
    # The .socket units that start it (socket activation).
    socket_units: tuple[str, ...] = ()


def _s(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


@contextlib.contextmanager
def _bus() -> Iterator[Any]:
    try:
        from pystemd.dbuslib import DBus, DBusAddress
    except ImportError as e:  # pragma: no cover - depends on the host
        raise SeamlessError("pystemd is not installed (Debian: apt install python3-pystemd)") from e
    if os.geteuid() == 0 and PRIVATE_SOCKET.exists():
        bus = DBusAddress(b"unix:path=" + bytes(PRIVATE_SOCKET), peer_to_peer=True)
    else:
        bus = DBus()
    try:
        bus.open()
    except Exception as e:
        raise SeamlessError(f"cannot talk to systemd over D-Bus: {e}") from e
    try:
        yield bus
    except SeamlessError:
        raise
    except Exception as e:  # pystemd raises its own D-Bus error types
        raise SeamlessError(f"systemd D-Bus call failed: {e}") from e
    finally:
        bus.close()


def unit_info(name: str) -> UnitInfo:
    from pystemd.systemd1 import Unit

    with _bus() as bus:
        u = Unit(name.encode(), bus=bus)
        u.load()
        load_state = _s(u.Unit.LoadState)
        if load_state != "loaded" or not name.endswith(".service"):
            return UnitInfo(
                name,
                load_state,
                _s(u.Unit.ActiveState),
                _s(u.Unit.SubState),
                0,
                "",
                "",
                None,
                "",
                "",
                _s(u.Unit.FragmentPath),
            )
        mem = int(u.Service.MemoryCurrent)
        exec_start = u.Service.ExecStart
        path = _s(exec_start[0][0]) if exec_start else ""
        return UnitInfo(
            name=name,
            load_state=load_state,
            active_state=_s(u.Unit.ActiveState),
            sub_state=_s(u.Unit.SubState),
            main_pid=int(u.Service.MainPID),
            control_group=_s(u.Service.ControlGroup),
            service_type=_s(u.Service.Type),
            memory_current=None if mem == 2**64 - 1 else mem,
            syslog_identifier=_s(u.Service.SyslogIdentifier) or os.path.basename(path),
            exec_start=path,
            fragment_path=_s(u.Unit.FragmentPath),
            pid_file=_s(u.Service.PIDFile),
            exec_argv=tuple(_s(a) for a in exec_start[0][1]) if exec_start else (),
            dynamic_uid=_dynamic_uid(u),
            socket_units=tuple(n for t in u.Unit.TriggeredBy if (n := _s(t)).endswith(".socket")),
        )


UID_UNSET = 2**32 - 1


def _dynamic_uid(u: Any) -> int | None:
    """The UID of a DynamicUser= unit's user, as systemd allocated it when the unit started."""
    if not u.Service.DynamicUser:
        return None
    uid = int(u.Service.UID)
    return None if uid == UID_UNSET else uid


def has_start_job(name: str) -> bool:
    """Whether a start job for NAME is queued (e.g. kexec.target during a kexec shutdown)."""
    with _bus() as bus:
        from pystemd.systemd1 import Manager

        m = Manager(bus=bus)
        m.load()
        for job in m.Manager.ListJobs():
            # (id, unit, type, state, job path, unit path)
            if _s(job[1]) == name and _s(job[2]) == "start":
                return True
    return False


def start_unit(name: str, mode: str = "replace", wait: float = 0) -> None:
    """Queue a start job for NAME; with WAIT, wait that long for it to be active."""
    from pystemd.systemd1 import Manager, Unit

    with _bus() as bus:
        m = Manager(bus=bus)
        m.load()
        m.Manager.StartUnit(name.encode(), mode.encode())
        if not wait:
            return
        u = Unit(name.encode(), bus=bus)
        u.load()
        deadline = time.monotonic() + wait
        while True:
            state = _s(u.Unit.ActiveState)
            if state == "active":
                return
            if state == "failed" or time.monotonic() > deadline:
                raise SeamlessError(f"{name} did not start (state {state}); see 'journalctl -u {name}'")
            time.sleep(0.1)


def mount_unit_name(path: str) -> str:
    """The .mount unit systemd names after PATH (systemd-escape --path --suffix=mount)."""
    text = "/".join(p for p in path.split("/") if p)
    if not text:
        return "-.mount"
    out = []
    for i, b in enumerate(text.encode()):
        c = chr(b)
        if c == "/":
            out.append("-")
        elif (c.isascii() and c.isalnum()) or c in ":_" or (c == "." and i > 0):
            out.append(c)
        else:
            out.append(f"\\x{b:02x}")
    return "".join(out) + ".mount"


def runtime_mounts(points: list[str]) -> set[str]:
    """Those of POINTS whose mount systemd knows only from the mount table.

    Such a mount has no unit file and no fstab line (its unit's SourcePath= is
    /proc/self/mountinfo): it was made at run time, by a container engine, by
    logind for a login, by hand. A new boot does not have it.
    """
    from pystemd.systemd1 import Unit

    out = set()
    with _bus() as bus:
        for point in points:
            u = Unit(mount_unit_name(point).encode(), bus=bus)
            u.load()
            if _s(u.Unit.LoadState) != "loaded" or _s(u.Unit.FragmentPath):
                continue
            if _s(u.Unit.SourcePath) == "/proc/self/mountinfo":
                out.add(point)
    return out


def stop_unit(name: str) -> None:
    from pystemd.systemd1 import Manager

    with _bus() as bus:
        m = Manager(bus=bus)
        m.load()
        m.Manager.StopUnit(name.encode(), b"replace")


def restart_unit(name: str) -> None:
    from pystemd.systemd1 import Manager

    with _bus() as bus:
        m = Manager(bus=bus)
        m.load()
        m.Manager.ResetFailedUnit(name.encode())
        m.Manager.RestartUnit(name.encode(), b"replace")


RUNNING = ("active", "activating", "reloading")


def start_if_stopped(name: str, why: str) -> UnitInfo:
    """Start NAME afresh unless it runs (it ran before the upgrade, so it runs after it); its state then."""
    info = unit_info(name)
    if info.active_state in RUNNING:
        return info
    log.warning("Starting %s afresh: %s", name, why)
    restart_unit(name)
    return unit_info(name)


def manager_property(name: str) -> Any:
    """A property of PID 1's Manager object, e.g. 'KExecWatchdogUSec'."""
    from pystemd.systemd1 import Manager

    with _bus() as bus:
        m = Manager(bus=bus)
        m.load()
        return getattr(m.Manager, name)


def daemon_reload() -> None:
    from pystemd.systemd1 import Manager

    with _bus() as bus:
        m = Manager(bus=bus)
        m.load()
        m.Manager.Reload()


def notify(message: str) -> None:
    """sd_notify(3): tell systemd how a Type=notify service is doing (nothing outside one)."""
    where = os.environ.get("NOTIFY_SOCKET")
    if not where:
        return
    addr = "\0" + where[1:] if where.startswith("@") else where
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        s.sendto(message.encode(), addr)
