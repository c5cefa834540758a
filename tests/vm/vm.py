"""Boot the test image under QEMU and follow the scenario on the serial console.

The guest's driver (tests/vm/guest/driver.py) prints 'SEAMLESS-TEST <event>
<json>' lines. One QEMU process covers boot 1 and, after the kexec, boot 2;
the ordinary reboot ends QEMU (-no-reboot) and boot 3 is a new QEMU process.

``python3 -m tests.vm.vm demo`` is what ``make demo`` runs.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import os
import re
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.vm import image as vmimage
from tests.vm import tbflush

# Generous: under TCG a kexec can take minutes to reach userspace (PLATFORM.md),
# and the full scenario's one QEMU run (boot A, refused and real upgrades, 21
# restores, checks) was cut off at 900 s with its restores under way.
QEMU_TIMEOUT = float(os.environ.get("SEAMLESS_QEMU_TIMEOUT", "1500"))


@dataclasses.dataclass(frozen=True)
class Machine:
    """The guest's RAM and the PMEM reservation carved out of it (memmap=SIZE!OFFSET)."""

    memory: str = "2560M"
    memmap: str = "memmap=512M!1536M"
    # How long one QEMU run (boot, upgrade, boot after the kexec, checks) may take.
    timeout: float = QEMU_TIMEOUT
    # What a panic does: reset at once (QEMU exits, -no-reboot). "" leaves it to
    # the kernel's default (wait forever) or to the panic= the upgrade adds.
    panic: str = "panic=-1"
    # Boot from the disk through the firmware and the guest's own GRUB (whose
    # grub.cfg then names the kernel and its command line), not QEMU's -kernel.
    boot_loader: bool = False
    # QEMU's -accel (SEAMLESS_QEMU_ACCEL overrides it). TCG's translation buffer at 256 MiB
    # instead of its 1 GiB: translated code left from the kernel before a kexec keeps the pages
    # it was in on QEMU's slow write path until the buffer is flushed, which made a kexec'd boot
    # take 4 to 113 s (a cold one 5 to 6 s) and a CI run overrun its 90 minutes; a smaller
    # buffer flushes sooner, at some cost to CPU-heavy guest code (docs/platform.md).
    accel: str = "tcg,tb-size=256"
    # QEMU's -cpu (see TRIXIE_MACHINE for why it can differ).
    cpu: str = "max"


DEFAULT = Machine()
# The services test: 14 Debian services need more room for their images, and
# checkpointed, pre-dumped and restored on two emulated CPUs, more time (its
# one QEMU run took over 15 min here).
LARGE = Machine("3072M", "memmap=1G!1536M", 1800)
# The full scenario: its first QEMU run boots A, refuses, upgrades to B and back
# to A2 and arms again; in one CI run boot A took 8.5 min, B 8 and A2 more than
# 6, and 1500 s cut it off during the last arm.
FULL = Machine(timeout=2400)
# RAM on demand: nothing reserved at boot (docs/ram-on-demand.md).
NO_RESERVATION = Machine("2560M", "")
# The setup scenario: GRUB boots it, and setup finds RAM above 4 GiB (QEMU puts
# 1 GiB of the 4 there); no memmap= until setup writes one.
GRUB_BOOT = Machine("4096M", "", boot_loader=True)
# Debian 13's kernels (6.12) under this host's QEMU 7.2 TCG: SLUB's per-CPU
# cmpxchg16b leaves EFLAGS garbage (TF set: a #DB in kernel mode, then a double
# fault in __kmalloc_noprof) within a minute of boot; 6.1 does not trip over it.
# Without CX16 the kernel takes SLUB's locked path (docs/platform.md).
TRIXIE_MACHINE = Machine(cpu="max,cx16=off")
# The faults scenario: no panic= of the machine's own, so that the new kernel
# that panics reboots by the panic= the upgrade put on its command line.
FAULTS = Machine(panic="")
# The power scenario: each QEMU run (one upgrade, cut or not) took 1.5 to 3 min
# here; a run that hangs fails after 15 min, not 25 (CI's whole run has 90).
POWER = Machine(timeout=900)


@dataclasses.dataclass
class Event:
    name: str
    data: dict[str, Any]
    at: float  # host time


@dataclasses.dataclass
class Scenario:
    events: list[Event]
    consoles: list[Path]

    def get(self, name: str) -> dict[str, Any] | None:
        for e in self.events:
            if e.name == name:
                return e.data
        return None

    def at(self, name: str) -> float | None:
        for e in self.events:
            if e.name == name:
                return e.at
        return None

    def console_tail(self, lines: int = 40) -> str:
        """The last LINES non-blank lines of the last console (where a run stops), then the others' names."""
        out = []
        for n, c in enumerate(reversed(self.consoles)):
            if not c.exists():
                continue
            if n:
                out.append(f"--- (earlier) {c}")
                continue
            text = [line for line in c.read_text(errors="replace").splitlines() if line.strip()]
            out.append(f"--- {c} (last {lines} lines)")
            out += text[-lines:]
        return "\n".join(out)

    def timeline(self, t0: float | None = None) -> str:
        """One line per event the host saw, in order: how far the guest got (times from T0, or the first)."""
        if t0 is None:
            t0 = self.events[0].at if self.events else 0.0
        out = []
        for e in self.events:
            if e.name == "debug":
                continue
            keys = ("kernel", "phase", "error", "line", "rc", "when")
            brief = {k: e.data[k] for k in keys if k in e.data} if isinstance(e.data, dict) else {}
            out.append(f"  +{e.at - t0:7.1f} s  {e.name} {json.dumps(brief)[:160] if brief else ''}".rstrip())
        return "\n".join(out) or "  (no events)"


# The guest's chat service (tests/vm/guest/chat.py) is reachable from the host
# through QEMU's user-mode network: a client outside the VM. So is the podman
# container (chat.py too, behind the port it publishes).
CHAT_GUEST_PORT = 7790
CONTAINER_GUEST_PORT = 7792


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _network(console: Path, fwd: str | None) -> list[str]:
    """QEMU's user-mode network; with SEAMLESS_QEMU_PCAP=1 every frame also goes to CONSOLE's .pcap."""
    if fwd is None:
        return ["-nic", "none"]
    if os.environ.get("SEAMLESS_QEMU_PCAP") != "1":
        return ["-nic", f"user,model=virtio-net-pci{fwd}"]
    pcap = console.with_suffix(".pcap")
    return [
        "-netdev",
        f"user,id=net0{fwd}",
        "-device",
        "virtio-net-pci,netdev=net0",
        "-object",
        f"filter-dump,id=dump0,netdev=net0,file={pcap}",
    ]


def qemu_argv(
    img: vmimage.Image,
    console: Path,
    append: str = "",
    forwards: dict[int, int] | None = None,
    machine: Machine = DEFAULT,
    kernel_b: bool = False,
    gdb: Path | None = None,
) -> list[str]:
    """FORWARDS: host port -> guest port, through QEMU's user-mode network (none: no network).

    KERNEL_B: boot kernel B (a cold boot into the new kernel), not A. GDB: QEMU's gdb stub on
    this unix socket (tbflush).
    """
    words = ("root=/dev/vda rw console=ttyS0", machine.memmap, machine.panic, append)
    cmdline = " ".join(w for w in words if w)
    fwd = "".join(f",hostfwd=tcp:127.0.0.1:{h}-:{g}" for h, g in (forwards or {}).items())
    return (
        [
            "qemu-system-x86_64",
            "-accel",
            # SEAMLESS_QEMU_ACCEL: e.g. tcg,tb-size=64 (MiB of translated code kept; docs/benchmarks.md).
            os.environ.get("SEAMLESS_QEMU_ACCEL") or machine.accel,
            "-cpu",
            machine.cpu,
            "-smp",
            # SEAMLESS_QEMU_SMP: the guest's CPUs (one: the guest's work takes twice as long here,
            # docs/testing.md).
            os.environ.get("SEAMLESS_QEMU_SMP") or "2",
            "-m",
            machine.memory,
            "-display",
            "none",
            "-monitor",
            # SEAMLESS_QEMU_MONITOR=PATH: QEMU's human monitor on a unix socket (e.g. 'info jit').
            f"unix:{os.environ['SEAMLESS_QEMU_MONITOR']},server=on,wait=off"
            if os.environ.get("SEAMLESS_QEMU_MONITOR")
            else "none",
            "-serial",
            f"file:{console}",
        ]
        + _network(console, fwd if forwards else None)
        + (["-gdb", f"unix:{gdb},server=on,wait=off"] if gdb is not None else [])
        + [
            "-no-reboot",
            "-drive",
            f"file={img.disk},format=raw,if=virtio,cache=unsafe",
        ]
        + (
            []
            if machine.boot_loader
            else [
                "-kernel",
                str(img.kernel_b if kernel_b else img.kernel_a),
                "-initrd",
                str(img.initrd_b if kernel_b else img.initrd_a),
                "-append",
                cmdline,
            ]
        )
    )


class HostClient:
    """A TCP client on the host that keeps one connection to a chat service in the guest.

    The guest asks for it with 'tcp-client' events: {"action": "connect"} opens
    the connection and talks twice, {"action": "talk"} (after the kexec) talks
    once more on the same connection; "target" names the client (default
    "chat"). What the client saw becomes a 'tcp-host' event with that target.
    COMMAND is what it sends each time (INC adds one to the service's counter).
    """

    def __init__(self, guest_port: int, target: str, command: bytes = b"INC") -> None:
        self.port = free_port()
        self.guest_port = guest_port
        self.target = target
        self.command = command
        self.sock: socket.socket | None = None
        self.reader: Any = None

    def _talk(self) -> dict[str, Any]:
        assert self.sock is not None
        self.sock.sendall(self.command + b"\n")
        line = self.reader.readline()
        if not line:
            raise ConnectionError("connection closed by the guest")
        return dict(json.loads(line))

    def handle(self, data: dict[str, Any]) -> Event:
        out: dict[str, Any] = {"action": data.get("action"), "target": self.target}
        try:
            if data.get("action") == "connect":
                self.sock = socket.create_connection(("127.0.0.1", self.port), timeout=120)
                self.reader = self.sock.makefile("r")
                host, port = self.sock.getsockname()[:2]
                out["local"] = f"{host}:{port}"
                out["replies"] = [self._talk(), self._talk()]
            else:
                out["replies"] = [self._talk()]
        except (OSError, ValueError) as e:
            out["error"] = repr(e)
        return Event("tcp-host", out, time.time())


class SshClient:
    """An interactive SSH session from the host into the guest, kept open across the upgrade.

    The guest asks with 'ssh-client' events (target "ssh"): {"action":
    "connect", "send": LINE} logs in as root with the key the openssh
    workload made at image build and types LINE into the remote shell;
    {"action": "talk", "send": LINE} types LINE into the same shell, on the
    same connection. The guest checks what the shell did; this side reports
    whether its ssh is still connected.
    """

    KEY = "usr/local/lib/seamless-workloads/openssh/client_key"

    def __init__(self, root: Path | None, guest_port: int = 22, target: str = "ssh") -> None:
        # The image's root tree, where the guest's client key is.
        self.root = root
        self.port = free_port()
        self.guest_port = guest_port
        self.target = target
        self.proc: subprocess.Popen[bytes] | None = None

    def handle(self, data: dict[str, Any]) -> Event:
        out: dict[str, Any] = {"action": data.get("action"), "target": self.target}
        try:
            if data.get("action") == "connect":
                assert self.root is not None, "the image has no root tree to take the client key from"
                key = self.root.parent / "ssh-client-key"
                key.write_bytes((self.root / self.KEY).read_bytes())
                key.chmod(0o600)
                self.proc = subprocess.Popen(
                    [
                        *("ssh", "-tt", "-i", str(key), "-p", str(self.port)),
                        *("-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null"),
                        *("-o", "BatchMode=yes", "-o", "ServerAliveInterval=0", "root@127.0.0.1"),
                    ],
                    stdin=subprocess.PIPE,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            assert self.proc is not None and self.proc.stdin is not None, "no session"
            self.proc.stdin.write(str(data.get("send", "")).encode() + b"\n")
            self.proc.stdin.flush()
            out["connected"] = self.proc.poll() is None
        except (OSError, AssertionError) as e:
            out["error"] = repr(e)
        return Event("ssh-host", out, time.time())


MARK = "SEAMLESS-TEST "
# A kernel message on the serial console: "[   32.150763] powernow_k8: …".
KERNEL_MESSAGE = re.compile(r"\[\s*\d+\.\d+\] ")


class ConsoleEvents:
    """SEAMLESS-TEST lines from the console, one line at a time.

    The guest writes each event as one line to the serial port, and so does the
    kernel with its messages: one may land in the middle of an event line
    ("…29809a09f[   32.150763] powernow_k8: …" and the rest of the event on
    the next line). Such an event is put back together from the next line.
    """

    def __init__(self) -> None:
        self.pending = ""

    def feed(self, line: str) -> tuple[str, dict[str, Any]] | None:
        line = line.rstrip("\r")
        if self.pending:
            if MARK in line:  # the broken event never went on: give it up as it is
                self.pending = ""
            else:
                line, self.pending = self.pending + line, ""
        idx = line.find(MARK)
        if idx < 0:
            return None
        name, _, payload = line[idx + len(MARK) :].partition(" ")
        try:
            return name, dict(json.loads(payload))
        except ValueError:
            cut = KERNEL_MESSAGE.search(payload)
            if cut is not None:
                self.pending = MARK + name + " " + payload[: cut.start()]
                return None
            return name, {"raw": payload}


QEMU_STARTED = "[vm] QEMU started"  # the pseudo console lines boot() gives ON_LINE
QEMU_EXITED = "[vm] QEMU exited"


_QEMU_RUNS = itertools.count(1)


def _gdb_socket() -> Path:
    # Short and unique: a unix socket's path has room for 107 bytes, a fresh clone's build/ may not.
    return Path(tempfile.gettempdir()) / f"seamless-qemu-{os.getpid()}-{next(_QEMU_RUNS)}.gdb"


def _flush_translations(gdb: Path) -> None:
    """After a kexec: QEMU drops its translated code (tbflush, docs/platform.md)."""
    try:
        paused = tbflush.flush(gdb)
    except (OSError, RuntimeError) as e:
        # The boot goes on as it would have without: only slower (QEMU's artifact, not the guest's).
        print(
            f"[vm] could not flush QEMU's translated code after the kexec: {e}", file=sys.stderr, flush=True
        )
        return
    print(
        f"[vm] kexec: QEMU's translated code dropped (guest paused {paused * 1000:.0f} ms)",
        file=sys.stderr,
        flush=True,
    )


def boot(
    img: vmimage.Image,
    console: Path,
    events: list[Event],
    stop_on: set[str],
    clients: list[HostClient | SshClient] | None = None,
    machine: Machine = DEFAULT,
    forwards: dict[int, int] | None = None,
    on_event: Callable[[Event], None] | None = None,
    timeout: float = QEMU_TIMEOUT,
    kernel_b: bool = False,
    on_line: Callable[[str, float], None] | None = None,
) -> None:
    """Run one QEMU process until it exits (or times out); collect events.

    FORWARDS: more host port -> guest port forwards; ON_EVENT is called with each event as it comes.
    KERNEL_B: QEMU boots kernel B (the cold reboot of the benchmark). ON_LINE is called with
    every console line and the host time it was read (to within the half second of polling).
    """
    console.unlink(missing_ok=True)
    by_target = {c.target: c for c in clients or []}
    # SEAMLESS_QEMU_TBFLUSH=shutdown|kexec|clocksource: QEMU drops its translated code at each
    # kexec, through its gdb stub (tests/vm/tbflush.py: when exactly; an experiment, docs/platform.md).
    flush_at = tbflush.WHEN.get(os.environ.get("SEAMLESS_QEMU_TBFLUSH", ""), "")
    gdb = _gdb_socket() if flush_at else None
    argv = qemu_argv(
        img,
        console,
        forwards={**{c.port: c.guest_port for c in by_target.values()}, **(forwards or {})},
        machine=machine,
        kernel_b=kernel_b,
        gdb=gdb,
    )
    print(f"[vm] booting kernel {'B' if kernel_b else 'A'}, console: {console}", file=sys.stderr, flush=True)
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    if on_line is not None:
        on_line(QEMU_STARTED, time.time())
    deadline = time.monotonic() + timeout
    pos = 0
    partial = ""
    reader = ConsoleEvents()
    # The guest's 'cut-power' event: kill QEMU (a power cut) at the first console line holding all of these.
    cut: list[str] | None = None
    kexeced = False  # the guest kexec'd, its translated code not yet flushed
    try:
        while True:
            if console.exists():
                with console.open("rb") as f:
                    f.seek(pos)
                    chunk = f.read()
                    pos += len(chunk)
                partial += chunk.decode(errors="replace")
                *lines, partial = partial.split("\n")
                for line in lines:
                    if on_line is not None:
                        on_line(line, time.time())
                    if cut is not None and all(s in line for s in cut):
                        proc.kill()
                        proc.wait()
                        events.append(Event("power-cut", {"when": cut, "line": line[-300:]}, time.time()))
                        print(f"[vm] power cut at: {line[-200:]}", file=sys.stderr, flush=True)
                        return
                    if gdb is not None:
                        kexeced = kexeced or tbflush.KEXEC_LINE in line or tbflush.SHUTDOWN_LINE in line
                        if kexeced and flush_at in line and proc.poll() is None:
                            kexeced = False
                            _flush_translations(gdb)
                    got = reader.feed(line)
                    if got is None:
                        continue
                    name, data = got
                    if name == "cut-power":
                        cut = [str(x) for x in data["when"]]
                    events.append(Event(name, data, time.time()))
                    print(f"[vm] {name}: {json.dumps(data)[:300]}", file=sys.stderr, flush=True)
                    if on_event is not None:
                        on_event(events[-1])
                    client = (
                        by_target.get(str(data.get("target", "chat"))) if name.endswith("-client") else None
                    )
                    if client is not None:
                        events.append(client.handle(data))
                        print(f"[vm] {events[-1].name}: {events[-1].data}", file=sys.stderr, flush=True)
            if proc.poll() is not None:
                if on_line is not None:
                    on_line(QEMU_EXITED, time.time())
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"QEMU did not finish within {timeout:.0f} s")
            # Flushing at a kexec: the lines come 0.1 s apart, and the guest waits 0.3 s.
            time.sleep(0.05 if gdb is not None else 0.5)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if gdb is not None:
            gdb.unlink(missing_ok=True)
        err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
        if err.strip():
            print(f"[vm] qemu stderr: {err.strip()[-2000:]}", file=sys.stderr)


def run_scenario(img: vmimage.Image, out: Path, machine: Machine = DEFAULT) -> Scenario:
    """Boot 1 (upgrade) + boot 2 (after kexec) in one QEMU run, then the next QEMU runs (after a reboot,
    a reset or a power cut), until the guest is done."""
    out.mkdir(parents=True, exist_ok=True)
    sc = Scenario([], [])
    # The container's client only reads: the counter stays what the driver made it.
    clients: list[HostClient | SshClient] = [
        HostClient(CHAT_GUEST_PORT, "chat"),
        HostClient(CONTAINER_GUEST_PORT, "container", b"GET"),
        SshClient(img.root),
    ]
    runs: list[tuple[int, float, float]] = []  # QEMU run, started, ended (host time)
    try:
        for n in range(1, 8):
            console = out / f"console-{n}.log"
            sc.consoles.append(console)
            seen = len(sc.events)
            started = time.time()
            try:
                boot(img, console, sc.events, set(), clients, machine, timeout=machine.timeout)
            except TimeoutError as e:
                sc.events.append(Event("timeout", {"error": str(e)}, time.time()))
                return sc
            finally:
                runs.append((n, started, time.time()))
            names = {e.name for e in sc.events}
            # Done, failed, or no progress in this QEMU run: stop.
            if names & {"error", "done", "idle"} or len(sc.events) == seen:
                break
    finally:
        for c in clients:
            if isinstance(c, SshClient) and c.proc is not None:
                c.proc.kill()
                c.proc.wait()
        t0 = runs[0][1] if runs else None
        (out / "timeline.txt").write_text(run_times(runs) + "\n" + sc.timeline(t0) + "\n")
    return sc


def run_times(runs: list[tuple[int, float, float]]) -> str:
    """Each QEMU run's start and length, from the first run's start: where a test's minutes went."""
    t0 = runs[0][1] if runs else 0.0
    lines = [f"QEMU run {n}: +{a - t0:.1f} s, {b - a:.1f} s" for n, a, b in runs]
    if runs:
        lines.append(f"all runs: {runs[-1][2] - t0:.1f} s")
    return "\n".join(lines)


def demo(workdir: Path, workloads: list[Path] | None = None, machine: Machine = DEFAULT) -> int:
    """make demo [WORKLOAD="DIR ..."]: build, boot, upgrade, show what happened, write the report."""
    img = vmimage.build_image("workload" if workloads else "demo", workloads or ())
    t0 = time.time()
    sc = run_scenario(img, workdir, machine)
    before, after = sc.get("before"), sc.get("after")
    print()
    if before is None or after is None:
        print("The scenario did not get through; console output:")
        print(sc.console_tail())
        return 1
    rep = dict(after["report"])
    print(f"Kernel: {rep['kernel']['from']} -> {after['uname']}")
    ok_all = True
    if workloads:
        scripts = {**before["workload"], **after["workload"]}
        after_ok = all(res["rc"] == 0 for name, res in scripts.items() if name.endswith("/after.sh"))
        for u in rep.get("units", []):
            u["state_ok"] = u["outcome"] == "restored" and after_ok
            ok_all = ok_all and u["state_ok"]
            print(
                f"{u['unit']}: {u['outcome']}, MainPID {u['main_pid_before']} -> {u['main_pid_after']}"
                + (f" ({u['reason']})" if u.get("reason") else "")
            )
        for name, res in scripts.items():
            print(f"{name}: exit status {res['rc']}")
            for line in res["tail"][-5:]:
                print(f"  | {line}")
        rep["workload"] = {"dirs": [str(w) for w in workloads], "scripts": scripts}
    else:
        for u in rep.get("units", []):
            port = u["unit"].removeprefix("seamless-demo@").removesuffix(".service")
            sb, sa = before[port]["state"], after["states"][port]["state"]
            u["state_ok"] = all(sb[k] == sa[k] for k in ("counter", "blob_sha256", "started_at", "pid"))
            ok_all = ok_all and u["state_ok"]
            ua = after["states"][port]["unit"]
            print(f"{u['unit']}:")
            print(
                f"  before: kernel {sb['kernel']}, counter={sb['counter']}, blob {sb['blob_sha256'][:16]}…, "
                f"PID {sb['pid']}"
            )
            print(
                f"  after:  kernel {sa['kernel']}, counter={sa['counter']}, blob {sa['blob_sha256'][:16]}…, "
                f"PID {sa['pid']}"
            )
            print(
                f"  {u['outcome']}; state kept: {'yes' if u['state_ok'] else 'NO'}; "
                f"unit {ua['ActiveState']}, "
                f"MainPID {ua['MainPID']}, fresh starts this boot: {ua['fresh_starts']}"
            )
    print("Phases (seconds, measured in the guest):")
    for k, v in rep.get("seconds", {}).items():
        print(f"  {k:10} {v}")
    rep["demo"] = {
        "host_seconds": {
            "before_to_state_back": round(sc.at("after") - sc.at("before"), 1)  # type: ignore[operator]
            if sc.at("after") and sc.at("before")
            else None,
            "whole_run": round(time.time() - t0, 1),
        },
    }
    (workdir / "report.json").write_text(json.dumps(rep, indent=2) + "\n")
    print(f"Report: {workdir / 'report.json'}")
    drawn = sc.get("timeline")
    if drawn and drawn["rc"] == 0:
        # What 'seamless-upgrade report --svg' drew in the guest, from this report.
        (workdir / "timeline.svg").write_text(drawn["svg"])
        print(f"Timeline: {workdir / 'timeline.svg'}")
    return 0 if ok_all else 1


def lab(script: Path, workloads: list[Path] | None = None) -> int:
    """Boot the image once (with WORKLOADS installed), run SCRIPT in the guest as root, print its output."""
    img = vmimage.build_image("lab", workloads or (), lab_script=script)
    sc = run_scenario(img, vmimage.BUILD / "lab")
    res = sc.get("lab")
    if res is None:
        print(sc.console_tail())
        return 1
    print(res["out"])
    print(f"exit status {res['rc']}")
    return 0


if __name__ == "__main__":
    args = sys.argv[1:]
    # --workload takes one or more directories, separated by spaces (make demo WORKLOAD="A B").
    wls = [Path(w).resolve() for i, a in enumerate(args) if a == "--workload" for w in args[i + 1].split()]
    rest = [a for i, a in enumerate(args) if a != "--workload" and (i == 0 or args[i - 1] != "--workload")]
    if rest[:1] == ["lab"] and len(rest) == 2:
        sys.exit(lab(Path(rest[1]), wls))
    if rest == ["demo"]:
        sys.exit(demo(vmimage.BUILD / "demo", wls))
    print(
        'usage: python3 -m tests.vm.vm demo [--workload "DIR ..."] | lab SCRIPT [--workload "DIR ..."]',
        file=sys.stderr,
    )
    sys.exit(2)
