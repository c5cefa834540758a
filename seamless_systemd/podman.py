"""podman containers run by a systemd service: checkpoint and restore through podman.

A container a unit runs the way `podman generate systemd --new` writes it
(`podman run --cgroups=no-conmon --sdnotify=conmon --rm -d …`, Type=notify)
has podman's supervisor, conmon, as the unit's MainPID; the container's
processes live below it in their own PID namespace (usually in their own
cgroup, machine.slice/libpod-ID.scope). CRIU cannot dump that tree from the
outside (nested PID namespaces), but podman dumps the container itself with
CRIU (`podman container checkpoint --export`: memory, the changes to its root
file system, its network settings, one tar file) and brings it back with a
new conmon (`podman container restore --import`). That new conmon, started by
restore-unit inside the unit's cgroup, becomes the unit's MainPID.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path
from typing import Any

from seamless_systemd import netlock, procs, sockets, systemd
from seamless_systemd.errors import CheckpointError, CommandError, RestoreError, SeamlessError
from seamless_systemd.run import run

PODMAN = "podman"
ARCHIVE = "container.tar"


@dataclasses.dataclass(frozen=True)
class Container:
    id: str
    name: str
    running: bool
    pid: int  # the container's first process, as the host sees it
    conmon_pid: int
    runtime: str  # the OCI runtime (runc, crun)
    auto_remove: bool = True  # run with --rm
    # Published TCP ports: (port in the container, port on the host).
    ports: tuple[tuple[int, int], ...] = ()


def installed() -> bool:
    return shutil.which(PODMAN) is not None


def inspect(ref: str) -> Container | None:
    """The container named or numbered REF, or None if there is none."""
    try:
        out = run([PODMAN, "container", "inspect", "--format", "json", ref], check=False, timeout=60)
    except CommandError as e:  # podman missing
        raise SeamlessError(f"cannot run podman: {e}") from e
    if out.returncode != 0:
        if "no such" in (out.stderr or "").lower():
            return None
        raise SeamlessError(f"podman container inspect {ref} failed: {(out.stderr or '').strip()}")
    try:
        data = json.loads(out.stdout)[0]
        st = data["State"]
        return Container(
            id=data["Id"],
            name=data["Name"].lstrip("/"),
            running=bool(st.get("Running")),
            pid=int(st.get("Pid") or 0),
            conmon_pid=int(st.get("ConmonPid") or 0),
            runtime=str(data.get("OCIRuntime") or ""),
            auto_remove=bool((data.get("HostConfig") or {}).get("AutoRemove")),
            ports=_published(data.get("NetworkSettings") or {}),
        )
    except (ValueError, KeyError, IndexError, TypeError) as e:
        raise SeamlessError(f"podman container inspect {ref}: unexpected output ({e})") from e


def _published(settings: dict[str, Any]) -> tuple[tuple[int, int], ...]:
    """NetworkSettings.Ports ({"7792/tcp": [{"HostIp": "", "HostPort": "7792"}]}) as (inside, host) pairs."""
    out = set()
    for key, binds in (settings.get("Ports") or {}).items():
        port, _, proto = str(key).partition("/")
        if proto != "tcp" or not port.isdigit():
            continue
        for b in binds or []:
            if str(b.get("HostPort", "")).isdigit():
                out.add((int(port), int(b["HostPort"])))
    return tuple(sorted(out))


def connections(c: Container) -> list[tuple[str, int, str, int]]:
    """The container's open TCP connections, as its network namespace sees them."""
    if c.pid <= 0:
        return []
    inet = sockets.inet_sockets(str(procs.PROC / str(c.pid) / "net"))
    return [s.connection() for s in inet.values() if s.established]


def host_side(c: Container, conns: list[tuple[str, int, str, int]]) -> list[tuple[str, int, str, int]]:
    """The connections as they reach this host: through a published port (any local address)."""
    host_port = dict(c.ports)
    return [
        ("0.0.0.0", host_port[lport], remote, rport)
        for _, lport, remote, rport in conns
        if lport in host_port
    ]


def conmon_container_id(pid: int) -> str | None:
    """The container ID that process PID supervises, if PID is podman's conmon."""
    if procs.comm(pid) != "conmon":
        return None
    try:
        argv = (procs.PROC / str(pid) / "cmdline").read_bytes().split(b"\0")
    except OSError:
        return None
    words = [a.decode(errors="replace") for a in argv]
    for i, word in enumerate(words):
        if word in ("-c", "--cid") and i + 1 < len(words):
            return words[i + 1]
        if word.startswith("--cid="):
            return word.split("=", 1)[1]
    return None


def of_unit(main_pid: int) -> Container | None:
    """The container a unit runs, when its main process is the container's conmon."""
    if main_pid <= 0:
        return None
    cid = conmon_container_id(main_pid)
    if cid is None:
        return None
    return inspect(cid)


def unit_of_pid(pid: int) -> str:
    """The systemd unit whose cgroup holds PID ('' when unknown)."""
    try:
        text = (procs.PROC / str(pid) / "cgroup").read_text()
    except OSError:
        return ""
    for line in text.splitlines():
        if line.startswith("0::"):
            for part in reversed(line[3:].split("/")):
                if part.endswith((".service", ".scope")):
                    return part
    return ""


def carrier(name: str) -> tuple[str, str | None]:
    """The service that runs container NAME: (unit, None), or ('', why it cannot be preserved)."""
    if not installed():
        return "", f"container {name}: podman is not installed"
    c = inspect(name)
    if c is None:
        return "", f"container {name}: no such podman container ('podman ps -a' lists them)"
    if not c.running or c.conmon_pid <= 0:
        return "", f"container {name} is not running"
    unit = unit_of_pid(c.conmon_pid)
    where = f"its conmon, PID {c.conmon_pid}, is in {unit or 'no unit'}"
    if unit.endswith(".service"):
        main = systemd.unit_info(unit).main_pid
        if main == c.conmon_pid:
            return unit, None
        where += f", whose main process is PID {main}"
    return "", (
        f"container {name} is not run by a systemd service of its own ({where}); run it from one, "
        f"e.g. 'podman generate systemd --new --name {name}', so that it can be brought back inside "
        "that service"
    )


def problems(c: Container) -> list[str]:
    """What keeps podman from checkpointing C, or from restoring it, found before any dump."""
    out = []
    if not c.auto_remove:
        out.append(
            f"runs container {c.name} without --rm: after its checkpoint the stopped container would stay "
            "and stand in the way of its restore (which never removes a container); run it with --rm, "
            "as 'podman generate systemd --new' does"
        )
    conns = connections(c)
    if conns:
        published = {inside for inside, _ in c.ports}
        other = sorted({f"{r}:{rp}" for _, lp, r, rp in conns if lp not in published})
        if other:
            out.append(
                f"has TCP connection(s) of container {c.name} that do not come in through a published port "
                f"(with {', '.join(other[:3])}); the host's NAT state for them does not survive the kexec"
            )
        if not netlock.available():
            out.append(
                f"has {len(conns)} open TCP connection(s) into container {c.name}; keeping them needs "
                "iptables and ip6tables: apt install iptables"
            )
    if c.runtime == "crun":
        try:
            version = run(["crun", "--version"], timeout=30).stdout
        except CommandError:
            version = ""
        if "+CRIU" not in version:
            out.append(
                f"runs container {c.name} with crun, which is built without CRIU here, so podman "
                "cannot checkpoint it; run it with '--runtime runc'"
            )
    return out


def memory_bytes(c: Container) -> int:
    return sum(procs.anon_bytes(p) for p in procs.tree(c.pid)) if c.pid > 0 else 0


def checkpoint(
    c: Container, archive: Path, log: Path, leave_running: bool, timeout: float, tcp: bool = False
) -> None:
    """podman container checkpoint --export ARCHIVE; without LEAVE_RUNNING the container stops.

    TCP: keep its open connections (CRIU's TCP repair; the restore needs it too).
    """
    archive.parent.mkdir(parents=True, exist_ok=True)
    argv = [PODMAN, "container", "checkpoint", "--export", str(archive)]
    if leave_running:
        argv.append("--leave-running")
    if tcp:
        argv.append("--tcp-established")
    argv.append(c.id)
    try:
        out = run(argv, timeout=timeout)
        log.write_text(out.stdout + out.stderr)
    except CommandError as e:
        log.write_text(str(e))
        raise CheckpointError(f"podman could not checkpoint container {c.name}: {e.stderr.strip()}") from e


def restore(archive: Path, name: str, log: Path, timeout: float, tcp: bool = False) -> Container:
    """podman container restore --import ARCHIVE; the restored container (with its new conmon)."""
    if inspect(name) is not None:
        # A container run without --rm stays behind, stopped, after its checkpoint.
        # It is left alone (nothing is removed that the unit's own start may need).
        raise RestoreError(
            f"a container named {name} already exists in this boot, so podman cannot recreate it from the "
            "checkpoint; run containers that must be kept with --rm (as 'podman generate systemd --new' does)"
        )
    try:
        argv = [PODMAN, "container", "restore", "--import", str(archive)]
        out = run([*argv, "--tcp-established"] if tcp else argv, timeout=timeout)
        log.write_text(out.stdout + out.stderr)
    except CommandError as e:
        log.write_text(str(e))
        raise RestoreError(f"podman could not restore container {name}: {e.stderr.strip()}") from e
    c = inspect(name)
    if c is None or not c.running or c.conmon_pid <= 0:
        raise RestoreError(f"container {name} is not running after podman restored it")
    return c


def cidfile(argv: list[str]) -> str:
    """The --cidfile a `podman run` command line writes ('' if none)."""
    for i, word in enumerate(argv):
        if word == "--cidfile" and i + 1 < len(argv):
            return argv[i + 1]
        if word.startswith("--cidfile="):
            return word.split("=", 1)[1]
    return ""
