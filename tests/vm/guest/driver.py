#!/usr/bin/python3
"""The guest side of the VM scenarios: one step per boot, the phase kept on disk.

Each step prints 'SEAMLESS-TEST <event> <json>' lines on the serial console,
which the host harness (tests/vm/vm.py) reads. /etc/seamless-test/scenario
names the scenario:

full (the test):
  boot 1, kernel A   touch the demos' state; a refused upgrade (a unit CRIU
                     cannot dump) leaves everything running; then
                     'systemctl start kexec-upgrade.target'. A test unit
                     damages the images of demo 7778 and 7779 at shutdown.
  boot 2, kernel B   7777 restored, 7778/7779 started afresh; then
                     'seamless-upgrade arm --kernel A' + plain 'systemctl kexec'
  boot 3, kernel A   all three restored; 'seamless-upgrade arm', then an
                     ordinary 'systemctl reboot' (the upgrade must not happen)
  boot 4, kernel A   all started afresh; 'seamless-upgrade run --or-reboot'
                     with a unit CRIU cannot dump: an ordinary reboot
  boot 5, kernel A   the report and the journal say why; what the journal
                     holds of every boot; power off
demo:
  boot 1 -> 'seamless-upgrade run' -> boot 2: report, power off
faults (the fault rows that need a kernel of their own):
  boot 1, kernel A   a damaged kernel is refused before anything stops, and
                     so is a run while dpkg installs a package; then
                     'seamless-upgrade run' into a kernel whose initramfs
                     fails (a second run beside it is refused): it panics,
                     and panic=-1 resets the machine
  boot 2, kernel A   an ordinary boot: the units started normally, the
                     report says the upgrade did not come back; then an
                     upgrade to B in which CRIU is killed midway through the
                     dump of 7779 (at the shutdown) and the restore of 7778,
                     and the root file system is full before the restore
  boot 3, kernel B   7777 restored, 7778 and 7779 afresh, nothing half-restored
                     left; the report on the PMEM only; /var freed. A user
                     other than root is refused; then an upgrade to A whose
                     manifest is cut in half at the shutdown
  boot 4, kernel A   nothing restored, every unit afresh, the report says why;
                     then a plain kexec into B with seamless.* words that are
                     not ours (a generation '../../etc', a mount '/etc')
  boot 5, kernel B   an ordinary boot, nothing failed; power off
power (power cuts: the host kills QEMU when the console shows the moment):
  boot 1, kernel A   'seamless-upgrade run', cut as the kexec starts the new kernel
  boot 2, kernel A   units started afresh, report 'not-arrived'; run, cut in the restore
  boot 3, kernel A   report 'interrupted'; run, cut in the dump of demo 7778
  boot 4, kernel A   units afresh; run: an upgrade that works (the PMEM reused)
  boot 5, kernel B   the state kept; power off
setup (a guest booted by GRUB from its own disk, with no memmap= of its own):
  boot 1, kernel A   'seamless-upgrade setup --size 512M'; an ordinary reboot
  boot 2, kernel A   GRUB gave the kernel our memmap=: /dev/pmem0 at the range
                     setup chose; 'seamless-upgrade run'
  boot 3, kernel B   the demos restored from that PMEM; 'setup --remove'; reboot
  boot 4, kernel A   no memmap=, no /dev/pmem0; power off
bench:
  the benchmark's runs, see bench.py
"""

import glob
import json
import os
import re
import socket
import subprocess
import time
from pathlib import Path

STATE = "/var/lib/seamless-test"
PHASE = f"{STATE}/phase"
SPOIL = f"{STATE}/spoil"
PMEM = "/dev/pmem0"
BLOCKER_CONF = "/etc/seamless/conf.d/90-blocker.yaml"
KERNEL_HOOK = "/etc/kernel/postinst.d/seamless-systemd"
OR_REBOOT = f"{STATE}/or-reboot"  # what 'run --or-reboot' said: .out, and its exit status .rc
RESTARTED = "seamless-prefork.service"  # restarted between the second arm and its kexec
GROWER = "seamless-grower.service"  # grows past the PMEM between the second arm and its kexec
ON_FAILURE_LOG = f"{STATE}/on-failure.log"  # seamless-failed@.service, the OnFailure= of seamless-exec
DISK_USER = "seamless-diskuser"  # a member of group disk, who must not read the PMEM
PORTS = (7777, 7778, 7779)
# The faults scenario's fourth demo, whose images the spoiler makes readable by
# others (owner and mode) after its checkpoint: it must start afresh.
LOOSE = 7798
LOOSEN = f"{STATE}/loosen"
# The demos whose state each step reports (the faults scenario adds LOOSE).
STATE_PORTS = list(PORTS)
# Kernels the faults scenario installs beside A and B, made from B: one damaged
# (image cut in half, built without the PMEM driver), one whose initramfs fails.
DAMAGED_KERNEL = "6.1.0-99-cloud-amd64"
PANICKING_KERNEL = "6.1.0-98-cloud-amd64"
# The unit-type cases: unit -> TCP port it answers on (None: no port).
TYPES = {
    "seamless-exec.service": 7780,
    "seamless-notify.service": 7781,
    "seamless-forking.service": 7782,
    "seamless-forking-nopid.service": 7783,
    "seamless-oneshot.service": None,
    "seamless-prefork.service": 7784,
    "seamless-backend.service": None,
    "seamless-frontend.service": 7785,
    "seamless-sandboxed.service": 7786,
    "seamless-resources.service": 7787,
    "seamless-sockact.service": "/run/seamless-sockact.sock",
    "seamless-sockact-tcp.service": 7788,
    "seamless-sockact-udp.service": ("udp", 7794),
    "seamless-sysv-private.service": 7795,
    "seamless-sysv.service": 7789,
    "seamless-chat.service": 7790,
    "seamless-sandboxed-rw.service": 7791,
    "seamless-podman.service": 7792,
    "seamless-dynamic.service": 7793,
}
SOCKACT = TYPES["seamless-sockact.service"]
RESOURCES_DIR = "/var/lib/seamless-resources"


def unit(port):
    return f"seamless-demo@{port}.service"


def emit(event, data):
    line = f"SEAMLESS-TEST {event} {json.dumps(data)}\n"
    with open("/dev/ttyS0", "w") as tty:
        tty.write(line)
    print(line, end="", flush=True)


def sh(*argv, timeout=600):
    p = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    return p.returncode, p.stdout + p.stderr


def start_upgrade(*argv):
    """Run ARGV, which starts an upgrade: the next boot's phase is 'upgraded'; a refusal ends the scenario."""
    set_phase("upgraded")
    rc, out = sh(*argv)
    emit("run", {"rc": rc, "out": out})
    if rc != 0:
        set_phase("failed")
        raise SystemExit(f"the upgrade did not start: {out}")


def set_phase(phase):
    with open(PHASE + ".tmp", "w") as f:
        f.write(phase)
        f.flush()
        os.fsync(f.fileno())
    os.rename(PHASE + ".tmp", PHASE)
    os.sync()


def ask(port, cmd="GET", timeout=10):
    """One request to the test service on TCP PORT (or unix socket PORT, a path; or ("udp", PORT))."""
    if isinstance(port, tuple):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.settimeout(timeout)
            s.sendto(cmd.encode(), ("127.0.0.1", port[1]))
            return json.loads(s.recv(65536))
    if isinstance(port, str):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(timeout)
        s.connect(port)
    else:
        s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    with s:
        s.sendall(cmd.encode() + b"\n")
        return json.loads(s.makefile().readline())


def demo(port, cmd="GET"):
    """Ask the test service (see ask), waiting up to two minutes for it to answer."""
    for _ in range(120):
        try:
            return ask(port, cmd)
        except OSError:
            time.sleep(1)
    raise SystemExit(f"the test service on {port} does not answer")


def unit_state(name):
    _, out = sh("systemctl", "show", name, "-p", "MainPID,ActiveState,SubState,NRestarts,DropInPaths,Result")
    props = dict(line.split("=", 1) for line in out.splitlines() if "=" in line)
    log = sh("journalctl", "-b", "-u", name, "-o", "cat", "--no-pager")[1]
    props["fresh_starts"] = log.count("starting fresh")
    props["journal_tail"] = log.splitlines()[-6:]
    return props


def all_states():
    return {str(p): {"state": demo(p), "unit": unit_state(unit(p))} for p in STATE_PORTS}


def cgroup_pids(cgroup):
    pids = set()
    base = Path("/sys/fs/cgroup" + cgroup)
    for procs in base.rglob("cgroup.procs") if cgroup else []:
        pids.update(int(x) for x in procs.read_text().split())
    return sorted(pids)


def types_state():
    out = {}
    for name, port in TYPES.items():
        _, props = sh(
            "systemctl",
            "show",
            name,
            "-p",
            "MainPID,ActiveState,SubState,Type,NRestarts,ControlGroup,Result,DropInPaths",
        )
        st = dict(line.split("=", 1) for line in props.splitlines() if "=" in line)
        st["pids"] = cgroup_pids(st.get("ControlGroup", ""))
        if port:
            st["reply"] = demo(port)
        st["fresh_starts"] = sh("journalctl", "-u", name, "-b", "-o", "cat")[1].count("starting fresh")
        out[name] = st
    out["seamless-exec.service"]["log_fresh_starts"] = read_or_none("/var/log/seamless-exec.log").count(
        "starting fresh"
    )
    out["seamless-exec.service"]["log_tail"] = read_or_none("/var/log/seamless-exec.log").splitlines()[-3:]
    out["seamless-forking.service"]["pid_file"] = read_or_none("/run/seamless-forking.pid")
    out["seamless-oneshot.service"]["stamp"] = read_or_none("/run/seamless-oneshot.stamp")
    rc, ps = sh("podman", "ps", "--all", "--format", "json")
    out["podman"] = [
        {"id": c["Id"], "names": c["Names"], "state": c["State"], "pid": c["Pid"]}
        for c in (json.loads(ps) if rc == 0 else [])
    ]
    rc, cidfile = sh("cat", "/run/seamless-podman.service.ctr-id")
    out["seamless-podman.service"]["cidfile"] = cidfile if rc == 0 else None
    return out


SOCKACT_TCP = TYPES["seamless-sockact-tcp.service"]
SOCKACT_UDP = TYPES["seamless-sockact-udp.service"]


def clients(port, n=20):
    """N clients in a row, each given 5 s: how many were answered, by which PIDs, the last counter."""
    name = "seamless-sockact-udp.socket" if isinstance(port, tuple) else "seamless-sockact-tcp.socket"
    out = {"socket": unit_state(name)["ActiveState"], "answered": 0, "pids": []}
    for _ in range(n):
        try:
            reply = ask(port, timeout=5)
        except (OSError, ValueError):
            continue
        out["answered"] += 1
        out["counter"] = reply["counter"]
        if reply["main_pid"] not in out["pids"]:
            out["pids"].append(reply["main_pid"])
    return out


def sockact_again(port, unit):
    """Restored twice: the clients still reach it; stopped, its .socket unit starts it afresh."""
    out = {"clients": clients(port)}
    sh("systemctl", "stop", f"{unit}.service")
    out["reply"] = demo(port)
    out["socket"] = unit_state(f"{unit}.socket")["ActiveState"]
    return out


def start_container():
    """Boot 1: import the container's image, start the unit that runs the container."""
    rc, out = sh("podman", "import", "/usr/local/lib/seamless-test/ctr-rootfs.tar", "localhost/seamless-py")
    if rc != 0:
        raise SystemExit(f"podman import failed: {out}")
    rc, out = sh("systemctl", "start", "seamless-podman.service")
    if rc != 0:
        raise SystemExit(f"seamless-podman.service did not start: {out}")


def touch_types():
    for port in (
        7780,
        7781,
        7782,
        7783,
        7785,
        7786,
        7787,
        SOCKACT,
        7788,
        7789,
        7791,
        7792,
        SOCKACT_UDP,
        7795,
    ):
        demo(port, "INC")
        demo(port, "INC")


def host_client(action, lines, target="chat", port=7790):
    """Ask the host for a TCP client action, wait until the chat service has seen LINES from it."""
    emit("tcp-client", {"action": action, "target": target})
    # One deadline for all of it: a service that was started afresh (its
    # connection gone) must fail this step, not hold the whole run.
    deadline = time.monotonic() + 150
    st = None
    while time.monotonic() < deadline:
        try:
            st = ask(port, "STATE")
        except (OSError, ValueError) as e:
            st = {"error": repr(e), "connections": {}}
        outside = {p: n for p, n in st["connections"].items() if not p.startswith("127.")}
        if any(n >= lines for n in outside.values()):
            return st
        time.sleep(0.5)
    return {"error": f"the host client did not get to {lines} lines in 150 s", "last": st}


def resources(name):
    """Poke seamless-resources.service (a file in its inotify watch, SIGUSR1), then look at it."""
    Path(f"{RESOURCES_DIR}/watched/{name}.txt").touch()
    sh("systemctl", "kill", "-s", "USR1", "--kill-whom=main", "seamless-resources.service")
    time.sleep(1)
    reply = demo(7787)
    _, props = sh("systemctl", "show", "seamless-resources.service", "-p", "ControlGroup")
    pids = {str(p) for p in cgroup_pids(props.strip().split("=", 1)[1])}
    locks = []
    for line in Path("/proc/locks").read_text().splitlines():
        f = line.split()
        if len(f) > 5 and f[4] in pids:
            locks.append({"type": f[1], "access": f[3], "pid": int(f[4]), "inode": f[5].rsplit(":", 1)[1]})
    shm = Path("/dev/shm/seamless-test-shm-7787")
    run_file = Path("/run/seamless-resources/open.txt")
    return {
        "reply": reply,
        "locks": sorted(locks, key=lambda x: x["type"]),
        "shm_file": {"exists": shm.exists(), "owner": shm.owner() if shm.exists() else None},
        "run_file": {
            "content": run_file.read_text() if run_file.exists() else None,
            "owner": run_file.owner() if run_file.exists() else None,
            "mode": oct(run_file.stat().st_mode & 0o777) if run_file.exists() else None,
        },
    }


WORKLOADS = Path("/usr/local/lib/seamless-workloads")


def run_scripts(name):
    """Run each workload's NAME script: {"WORKLOAD/NAME": exit status and output tail}."""
    out = {}
    for wl in sorted(WORKLOADS.iterdir()) if WORKLOADS.is_dir() else []:
        script = wl / name
        if not script.exists():
            continue
        try:
            p = subprocess.run(["sh", str(script)], cwd=wl, capture_output=True, text=True, timeout=600)
            res = {"rc": p.returncode, "tail": (p.stdout + p.stderr).splitlines()[-20:]}
        except subprocess.TimeoutExpired as e:
            res = {"rc": -1, "tail": [f"timed out after {e.timeout} s"]}
        out[f"{wl.name}/{name}"] = res
    return out


def workload_units():
    _, out = sh("seamless-upgrade", "status", "--json")
    units = json.loads(out)["units"]
    return {u: unit_state(u) for u in units}


def wait_for_finish():
    for _ in range(300):
        _, out = sh("systemctl", "show", "seamless-restore-finish.service", "-p", "ActiveState")
        if out.strip() in ("ActiveState=active", "ActiveState=failed"):
            return out.strip().split("=")[1]
        time.sleep(1)
    return "timeout"


def report():
    rc, out = sh("seamless-upgrade", "report", "--json")
    try:
        return json.loads(out)
    except ValueError:
        return {"rc": rc, "unparsed": out}


def other_kernel():
    return other_kernel_than()


def other_kernel_than(*also):
    """An installed kernel other than the running one and ALSO."""
    mine = os.uname().release
    versions = [n.removeprefix("vmlinuz-") for n in os.listdir("/boot") if n.startswith("vmlinuz-")]
    return next(v for v in versions if v != mine and v not in also)


def debug_dump():
    # What CRIU said at each restore, and what the restored units logged.
    restore_dir = Path("/run/seamless/restore")
    for log in sorted(restore_dir.glob("*.log")) if restore_dir.is_dir() else []:
        lines = log.read_text(errors="replace").splitlines()
        bad = [ln for ln in lines if "Error" in ln or "Warn" in ln or "criu-action" in ln]
        emit("debug", {"cmd": ["restore-log", log.name], "out": "\n".join(bad[-30:] or lines[-10:])})
    if WORKLOADS.is_dir():
        try:
            names = json.loads(sh("seamless-upgrade", "status", "--json")[1]).get("units", [])
        except ValueError:
            names = []
        units = [a for u in names for a in ("-u", u)]
        if units:
            cmd = ["journalctl", "-b", "--no-pager", "-o", "cat", "-n", "60", *units]
            emit("debug", {"cmd": cmd, "out": sh(*cmd)[1][-6000:]})
    for cmd in (
        ["journalctl", "-b", "-o", "short-monotonic", "--no-pager", "-u", "seamless-upgrade.service"],
        ["journalctl", "-b", "-1", "-o", "short-monotonic", "--no-pager", "-u", "seamless-*", "-u", "kexec*"],
        ["journalctl", "-b", "-o", "short-monotonic", "--no-pager", "-u", "seamless-*"],
        ["systemctl", "--failed", "--no-pager"],
    ):
        emit("debug", {"cmd": cmd, "out": sh(*cmd)[1][-8000:]})


def journal_entries(*match):
    """The journal's entries (every boot) matching MATCH, with the fields a sysadmin would read."""
    _, out = sh("journalctl", "-o", "json", "--no-pager", *match)
    keep = ("MESSAGE", "MESSAGE_ID", "PRIORITY", "UNIT", "_SYSTEMD_UNIT", "_BOOT_ID")
    entries = []
    for line in out.splitlines():
        try:
            e = json.loads(line)
        except ValueError:
            continue
        entries.append({k: v for k, v in e.items() if k in keep or k.startswith("SEAMLESS_")})
    return entries


def journal_said():
    """What the journal holds of the whole scenario, by MESSAGE_ID; what journalctl -x and -u show."""
    from seamless_systemd import journal as ids

    names = (
        *("ARMED", "REFUSED", "KEXEC", "CHECKPOINT", "UNIT_OUTCOME", "UPGRADE", "DISARMED", "FALLBACK"),
        "KERNEL",
    )
    said = {name: journal_entries(f"MESSAGE_ID={getattr(ids, name)}") for name in names}
    # Each of some 25 units has its entries; the demos and the unit that outgrew the PMEM tell enough.
    told = {unit(p) for p in PORTS} | {GROWER}
    for name in ("CHECKPOINT", "UNIT_OUTCOME"):
        said[name] = [e for e in said[name] if e.get("UNIT") in told]
    _, explained = sh("journalctl", "-x", "--no-pager", "-n", "1", f"MESSAGE_ID={ids.UPGRADE}")
    _, fallback = sh("journalctl", "-x", "--no-pager", "-n", "1", f"MESSAGE_ID={ids.FALLBACK}")
    return {
        **said,
        "explained": explained,
        "fallback_explained": fallback,
        "by_unit": journal_entries("-u", unit(7777), f"MESSAGE_ID={ids.UNIT_OUTCOME}"),
    }


DBUS = ("org.seamlesssystemd.Upgrade1", "/org/seamlesssystemd/Upgrade1", "org.seamlesssystemd.Upgrade1")


def dbus_api():
    """The D-Bus API as busctl calls it: a plan beside the CLI's, its Progress signals, nobody refused."""
    before = unit_state("seamless-dbus.service")["ActiveState"]
    match = "type='signal',interface='org.seamlesssystemd.Upgrade1'"
    monitor = subprocess.Popen(
        ["busctl", "--json=short", "monitor", f"--match={match}"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    time.sleep(2)
    plan_rc, plan = sh("busctl", "--json=short", "--timeout=300", "call", *DBUS, "Plan", "s", "")
    _, cli_plan = sh("seamless-upgrade", "plan", "--json")
    time.sleep(2)
    monitor.terminate()
    signals = monitor.communicate(timeout=30)[0]
    as_nobody = ("runuser", "-u", "nobody", "--", "busctl")
    arm_rc, arm = sh(*as_nobody, "call", *DBUS, "Arm", "s", "")
    status_rc, status = sh(*as_nobody, "--json=short", "call", *DBUS, "Status")
    return {
        "active_before": before,
        "active_after": unit_state("seamless-dbus.service")["ActiveState"],
        "plan_rc": plan_rc,
        "plan": plan,
        "cli_plan": cli_plan,
        "signals": [line for line in signals.splitlines() if "Progress" in line][:40],
        "nobody_arm_rc": arm_rc,
        "nobody_arm": arm,
        "nobody_status_rc": status_rc,
        "nobody_status": status,
        "armed": os.path.exists("/run/seamless/armed.json"),
        "polkit": os.path.exists("/usr/share/dbus-1/system-services/org.freedesktop.PolicyKit1.service"),
    }


def kexec_loaded():
    return Path("/sys/kernel/kexec_loaded").read_text().strip()


def refused_upgrade():
    """An upgrade that must be refused before anything is stopped."""
    # A container started from a shell (no unit to bring it back into) and one that does not exist.
    sh(
        *("podman", "run", "-d", "--name", "loose", "--network", "host", "localhost/seamless-py"),
        *("python3", "-c", "import time; time.sleep(600)"),
    )
    # Last: dbus-daemon drops the blocker's (never authenticated) connection after a while.
    sh("systemctl", "start", "seamless-blocker.service")
    frag = BLOCKER_CONF
    with open(frag, "w") as f:
        f.write("units: [seamless-blocker.service]\ncontainers: [loose, nosuch]\n")
    pids = {p: demo(p)["pid"] for p in PORTS}
    plan_rc, plan_out = sh("seamless-upgrade", "plan")
    run_rc, run_out = sh("seamless-upgrade", "run")
    emit(
        "refused",
        {
            "plan_rc": plan_rc,
            "plan_out": plan_out,
            "run_rc": run_rc,
            "run_out": run_out,
            "pids_before": pids,
            "pids_after": {p: demo(p)["pid"] for p in PORTS},
            "kexec_loaded": kexec_loaded(),
            "armed": os.path.exists("/run/seamless/armed.json"),
            "blocker": unit_state("seamless-blocker.service")["ActiveState"],
        },
    )
    os.unlink(frag)
    sh("systemctl", "stop", "seamless-blocker.service")
    sh("podman", "rm", "--force", "loose")


def pmem_access():
    """Who may read the PMEM device: its mode, and a member of group disk trying it and a disk beside it."""
    st = os.stat(PMEM)
    sh("useradd", "--system", "--no-create-home", "-G", "disk", DISK_USER)
    rc, out = sh("runuser", "-u", DISK_USER, "--", "head", "-c", "16", PMEM)
    vda_rc, _ = sh("runuser", "-u", DISK_USER, "--", "head", "-c", "16", "/dev/vda")
    return {
        "mode": f"{st.st_mode & 0o777:04o}",
        "gid": st.st_gid,
        "disk_member_rc": rc,
        "disk_member_out": out[-300:],
        "disk_member_reads_vda_rc": vda_rc,
    }


def stop_was_clean(name):
    """How UNIT's checkpoint at the kexec looked to systemd: its journal then, and whether OnFailure= ran."""
    _, prev = sh("journalctl", "-b", "-1", "-u", name, "-o", "cat", "--no-pager")
    return {"previous_boot": prev.splitlines()[-12:], "on_failure_log": read_or_none(ON_FAILURE_LOG)}


def read_or_none(path):
    p = Path(path)
    return p.read_text().strip() if p.exists() else None


def newc_archive(files):
    """An uncompressed cpio archive (newc) of FILES, {name: (mode, bytes)}, as the kernel unpacks them."""
    out = bytearray()
    entries = [*files.items(), ("TRAILER!!!", (0, b""))]
    for ino, (name, (mode, data)) in enumerate(entries, 1):
        raw = name.encode() + b"\0"
        fields = (ino, mode, 0, 0, 1, 0, len(data), 0, 0, 0, 0, len(raw), 0)
        out += b"070701" + "".join(f"{x:08x}" for x in fields).encode() + raw
        out += b"\0" * (-len(out) % 4) + data
        out += b"\0" * (-len(out) % 4)
    return bytes(out)


def install_kernel_copy(version, source, cut=False, without=(), failing_init=False):
    """Kernel VERSION in /boot and /lib/modules, made from SOURCE (see DAMAGED_KERNEL)."""
    boot = Path("/boot")
    image = (boot / f"vmlinuz-{source}").read_bytes()
    (boot / f"vmlinuz-{version}").write_bytes(image[: len(image) // 2] if cut else image)
    config = (boot / f"config-{source}").read_text()
    for option in without:
        config = config.replace(f"\n{option}=m\n", f"\n# {option} is not set\n")
    (boot / f"config-{version}").write_text(config)
    initrd = (boot / f"initrd.img-{source}").read_bytes()
    if failing_init:
        # A last archive whose /init replaces the real one and exits: "Attempted to kill init!"
        script = b"#!/bin/sh\necho 'seamless-test: this initramfs fails on purpose'\nexit 1\n"
        cpio = newc_archive({"init": (0o100755, script)})
        initrd += subprocess.run(["zstd", "-q", "-c"], input=cpio, capture_output=True, check=True).stdout
    (boot / f"initrd.img-{version}").write_bytes(initrd)
    modules = Path("/lib/modules") / version
    if not modules.exists():
        modules.symlink_to(f"/lib/modules/{source}")


def remove_kernel_copy(version):
    for path in (f"/boot/vmlinuz-{version}", f"/boot/config-{version}", f"/boot/initrd.img-{version}"):
        Path(path).unlink(missing_ok=True)
    Path(f"/lib/modules/{version}").unlink(missing_ok=True)


def damaged_kernel(source):
    """A kernel kexec cannot load and that lacks the PMEM driver: refused, nothing stopped."""
    install_kernel_copy(DAMAGED_KERNEL, source, cut=True, without=("CONFIG_BLK_DEV_PMEM",))
    pids = {p: demo(p)["pid"] for p in PORTS}
    rc, out = sh("seamless-upgrade", "run", "--kernel", DAMAGED_KERNEL)
    # The kernel hook, as run-parts calls it after an install; status repeats its word.
    hook_rc, hook_out = sh(KERNEL_HOOK, DAMAGED_KERNEL, f"/boot/vmlinuz-{DAMAGED_KERNEL}")
    _, status = sh("seamless-upgrade", "status")
    # A fleet tool's reboot command: not into a kernel that would not come back either.
    fleet_rc, fleet_out = sh("seamless-upgrade", "run", "--or-reboot", "--kernel", DAMAGED_KERNEL)
    result = {
        "rc": rc,
        "out": out,
        "hook_rc": hook_rc,
        "hook_out": hook_out,
        "status": status,
        "or_reboot_rc": fleet_rc,
        "or_reboot_out": fleet_out,
        "pids_before": pids,
        "pids_after": {p: demo(p)["pid"] for p in PORTS},
        "kexec_loaded": kexec_loaded(),
        "armed": os.path.exists("/run/seamless/armed.json"),
        "polkit": os.path.exists("/usr/share/dbus-1/system-services/org.freedesktop.PolicyKit1.service"),
    }
    remove_kernel_copy(DAMAGED_KERNEL)
    return result


def held(path, how):
    """Whether another process holds a lock on PATH (HOW: 'flock', or 'fcntl' as dpkg takes it)."""
    import fcntl

    try:
        fd = os.open(path, os.O_RDWR)
    except OSError:
        return False
    try:
        if how == "flock":
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        else:
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return False
    except OSError:
        return True
    finally:
        os.close(fd)


def wait_held(path, how, proc):
    for _ in range(600):
        if held(path, how) or proc.poll() is not None:
            return held(path, how)
        time.sleep(0.1)
    return False


def during_package_upgrade():
    """'seamless-upgrade run' while dpkg installs a package (its postinst waits): refused, nothing stopped."""
    pkg = Path("/tmp/seamless-slow")
    (pkg / "DEBIAN").mkdir(parents=True, exist_ok=True)
    (pkg / "DEBIAN/control").write_text(
        "Package: seamless-slow\nVersion: 1\nArchitecture: all\nMaintainer: test <t@example.org>\n"
        "Description: a package whose postinst waits for /run/seamless-slow-go\n"
    )
    (pkg / "DEBIAN/postinst").write_text(
        "#!/bin/sh\nfor i in $(seq 300); do [ -e /run/seamless-slow-go ] && exit 0; sleep 1; done\n"
    )
    (pkg / "DEBIAN/postinst").chmod(0o755)
    sh("dpkg-deb", "--build", str(pkg), "/tmp/seamless-slow.deb")
    dpkg = subprocess.Popen(
        ["dpkg", "-i", "/tmp/seamless-slow.deb"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    locked = wait_held("/var/lib/dpkg/lock", "fcntl", dpkg)
    pids = {p: demo(p)["pid"] for p in PORTS}
    rc, out = sh("seamless-upgrade", "run")
    result = {
        "dpkg_locked": locked,
        "dpkg_pid": dpkg.pid,
        "rc": rc,
        "out": out,
        "pids_before": pids,
        "pids_after": {p: demo(p)["pid"] for p in PORTS},
        "kexec_loaded": kexec_loaded(),
    }
    Path("/run/seamless-slow-go").touch()
    result["dpkg_rc"] = dpkg.wait(timeout=300)
    sh("dpkg", "--purge", "seamless-slow")
    return result


def wait_for(unit_name):
    """UNIT's properties once it ran (or its conditions said no), within five minutes."""
    props = {}
    for _ in range(300):
        _, out = sh(
            "systemctl",
            "show",
            unit_name,
            "-p",
            "ActiveState,Result,ConditionResult,ConditionTimestampMonotonic",
        )
        props = dict(line.split("=", 1) for line in out.splitlines() if "=" in line)
        skipped = (
            props.get("ConditionTimestampMonotonic", "0") != "0" and props.get("ConditionResult") == "no"
        )
        if props.get("ActiveState") in ("active", "failed") or skipped:
            return props
        time.sleep(1)
    return props


def after_upgrade(event):
    """The restore boot: once the finish step is over, the demos' state, the report, the kernel."""
    finish = wait_for_finish()
    emit(event, {"states": all_states(), "finish": finish, "report": report(), "uname": os.uname().release})
    debug_dump()


def came_back():
    """An ordinary boot after an upgrade that did not come back: the units, the boot check, the report."""
    check = wait_for("seamless-boot-check.service")
    _, journal = sh("journalctl", "-b", "-u", "seamless-boot-check.service", "-o", "cat", "--no-pager")
    return {
        "states": all_states(),
        "uname": os.uname().release,
        "cmdline": Path("/proc/cmdline").read_text().strip(),
        "boot_check": check.get("ActiveState"),
        "journal": journal.splitlines()[-10:],
        "report": report(),
        "in_flight": os.path.exists("/var/lib/seamless/in-flight.json"),
        "restore_ran": unit_state("seamless-restore.service").get("ActiveState"),
    }


# The power scenario: phase -> (what the host waits for on the console to cut the power, next phase).
POWER_CUTS = {
    "": (["kexec_core: Starting new kernel"], "cut-kexec"),
    # seamless-restore.service's READY=1 (Type=notify: "Started"): the connections held, the
    # restores starting, the images being checked.
    "cut-kexec": (["Started", "seamless-restore.", "before restoring"], "cut-restore"),
    # The checkpoint's own log line, on the console through journald (see power).
    "cut-restore": (["Checkpointing seamless-demo@7778.service"], "cut-dump"),
}


WRITER = 7796  # seamless-writer.service
WRITER_LOG = "/var/lib/seamless-writer/log"


def writer_log():
    """How much of the writer's log is whole: the numbers 1..N in order, N as long as it goes.

    A line cut short by a full disk or a power cut (the first digits of the next
    number; the writer goes on after it on a line of its own) is counted as torn
    and skipped: it is not a line lost, and the lines after it still count.
    """
    text = Path(WRITER_LOG).read_text(errors="replace") if os.path.exists(WRITER_LOG) else ""
    lines = [x for x in text.split("\n") if x.isdigit()]
    expected, torn = 1, 0
    for x in lines:
        if int(x) == expected:
            expected += 1
        elif str(expected).startswith(x):
            torn += 1
        else:
            break
    return {"lines": len(lines), "whole_up_to": expected - 1, "torn": torn}


def writer_now():
    """The writer's word (how far it has fsync'ed) and how much of its log is whole."""
    return {"state": demo(WRITER), "unit": unit_state("seamless-writer.service"), "log": writer_log()}


def power_states():
    return {**all_states(), "writer": {"state": demo(WRITER), "unit": unit_state("seamless-writer.service")}}


def power(phase):
    """Power cuts during the kexec, the restore and the dump; then an upgrade that must work."""
    if phase in POWER_CUTS:
        if phase:
            emit(f"after-{phase}", {**came_back(), "writer_log": writer_log(), "writer": demo(WRITER)})
        for _ in range(2):
            demo(7777, "INC")
        emit(f"before-{phase or 'start'}", power_states())
        when, nxt = POWER_CUTS[phase]
        emit("cut-power", {"when": when})
        if phase == "cut-restore":
            # This boot only (/run): journald shows the services' messages on the serial console.
            conf = Path("/run/systemd/journald.conf.d/50-console.conf")
            conf.parent.mkdir(parents=True, exist_ok=True)
            conf.write_text("[Journal]\nForwardToConsole=yes\nMaxLevelConsole=info\nTTYPath=/dev/ttyS0\n")
            sh("systemctl", "restart", "systemd-journald.service")
        set_phase(nxt)
        sh("seamless-upgrade", "run")
    elif phase == "cut-dump":
        emit("after-cut-dump", {**came_back(), "writer_log": writer_log(), "writer": demo(WRITER)})
        for _ in range(3):
            demo(7777, "INC")
        # In the restore boot, a new file is put where the writer's data file was (seamless-replacer).
        Path(f"{STATE}/replace-at-restore").touch()
        emit("before-upgrade", power_states())
        set_phase("upgraded")
        rc, out = sh("seamless-upgrade", "run")
        emit("run", {"rc": rc, "out": out})
        if rc != 0:
            set_phase("failed")
    elif phase == "upgraded":
        after_upgrade("after")
        emit("writer-after", {"state": demo(WRITER), "unit": unit_state("seamless-writer.service")})
        emit("done", {})
        set_phase("done")
        sh("systemctl", "poweroff")


KILL_CRIU = f"{STATE}/kill-criu"  # seamless-criu-killer.service
FILL_VAR = f"{STATE}/fill-var"  # seamless-var-filler.service
FILLER = f"{STATE}/filler"  # the file that takes the root file system's free blocks


def write_probe():
    """0 if /var takes 64 KiB now, else the errno."""
    try:
        with open(f"{STATE}/probe", "wb") as f:
            f.write(b"x" * 65536)
            f.flush()
            os.fsync(f.fileno())
        return 0
    except OSError as e:
        return e.errno
    finally:
        Path(f"{STATE}/probe").unlink(missing_ok=True)


def after_kills():
    """The restore boot with CRIU killed twice and /var full: the units, the leftovers, the report."""
    finish = wait_for_finish()
    probe = write_probe()
    rep = report()
    gen = rep.get("generation")
    _, finish_log = sh("journalctl", "-b", "-u", "seamless-restore-finish.service", "-o", "cat", "--no-pager")
    _, restore_log = sh("journalctl", "-b", "-u", unit(7778), "-o", "cat", "--no-pager")
    groups = {}
    for port in (7778, 7779):
        _, cg = sh("systemctl", "show", unit(port), "-p", "ControlGroup", "--value")
        groups[str(port)] = [
            {"pid": p, "cmdline": Path(f"/proc/{p}/cmdline").read_text().replace("\0", " ").strip()}
            for p in cgroup_pids(cg.strip())
            if os.path.exists(f"/proc/{p}")
        ]
    return {
        "states": all_states(),
        "finish": finish,
        "uname": os.uname().release,
        "probe_errno": probe,
        "report": rep,
        "kept_on_disk": bool(gen) and os.path.exists(f"/var/lib/seamless/reports/{gen}.json"),
        "finish_log": finish_log.splitlines()[-15:],
        "restore_log": restore_log.splitlines()[-15:],
        "groups": groups,
        "filler": os.path.exists(FILLER),
        # What a criu killed midway mounted in its working directory (the images): its cgroup yard.
        "mounts_in_images": [
            line.split()[4]
            for line in Path("/proc/self/mountinfo").read_text().splitlines()
            if line.split()[4].startswith("/run/seamless/pmem/")
        ],
    }


GARBLE = f"{STATE}/garble"  # seamless-spoiler.service cuts the manifest in half
MALFORMED = ["seamless.restore=../../etc", "seamless.mount=/etc", "seamless.ram=sometimes"]


def non_root():
    """Each entry point run as nobody: refused, nothing armed, nothing loaded."""
    out = {}
    for argv in (["plan"], ["run"], ["arm"], ["disarm"], ["restore-prepare"], ["restore-unit", unit(7777)]):
        rc, text = sh("runuser", "-u", "nobody", "--", "seamless-upgrade", *argv)
        out[" ".join(argv)] = {"rc": rc, "out": text}
    return {"calls": out, "armed": os.path.exists("/run/seamless/armed.json"), "kexec_loaded": kexec_loaded()}


def bad_input_boot():
    """A boot that had bad input from before: the units, what failed, what the generator decided."""
    _, failed = sh("systemctl", "--failed", "--plain", "--no-legend")
    _, gen_log = sh("journalctl", "-b", "-k", "-g", "seamless", "-o", "cat", "--no-pager")
    return {
        **came_back(),
        "failed_units": [ln.split()[0] for ln in failed.splitlines() if ln.strip()],
        "prepare": unit_state("seamless-restore.service"),
        "generator": json.loads(read_or_none("/run/seamless/generator.json") or "null"),
        "kernel_log": gen_log.splitlines()[-10:],
    }


def plan_json():
    p = subprocess.run(["seamless-upgrade", "plan", "--json"], capture_output=True, text=True)
    try:
        return json.loads(p.stdout)
    except ValueError:
        return {"rc": p.returncode, "unparsed": p.stdout + p.stderr}


def faults(phase):
    STATE_PORTS.append(LOOSE)
    if phase == "":
        for _ in range(3):
            demo(7777, "INC")
        demo(LOOSE, "INC")
        emit("before", all_states())
        # What plan says would bring the machine back if the new kernel panicked or hung.
        plan = plan_json()
        emit("plan-guard", {"notes": plan.get("notes"), "cmdline": plan.get("cmdline"), "plan": plan})
        emit("damaged-kernel", damaged_kernel(other_kernel()))
        install_kernel_copy(PANICKING_KERNEL, other_kernel_than(PANICKING_KERNEL), failing_init=True)
        emit("package-upgrade", during_package_upgrade())
        emit("writer-before-panic", writer_now())
        set_phase("panicked")
        emit("panic-run", {"kernel": PANICKING_KERNEL})
        first = subprocess.Popen(
            ["seamless-upgrade", "run", "--kernel", PANICKING_KERNEL],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        # A second run while the first one works: refused, the first goes on.
        locked = wait_held("/run/seamless/lock", "flock", first)
        rc, out = sh("seamless-upgrade", "run", "--kernel", PANICKING_KERNEL)
        emit("second-run", {"first_held_the_lock": locked, "rc": rc, "out": out})
        out, _ = first.communicate()
        # Seen only if the shutdown it queued leaves this process the time to say it.
        emit("panic-run-returned", {"rc": first.returncode, "out": out})
        if first.returncode != 0:
            set_phase("failed")
            raise SystemExit(f"the upgrade did not start: {out}")
    elif phase == "panicked":
        emit("after-panic", came_back())
        emit("writer-after-panic", writer_now())
        remove_kernel_copy(PANICKING_KERNEL)
        debug_dump()
        # Last: an upgrade to B in which CRIU is killed midway through one dump and one restore,
        # with the root file system full from before the restore (the killer and the filler).
        for _ in range(2):
            demo(7777, "INC")
        demo(LOOSE, "INC")
        emit("before-kills", all_states())
        emit("writer-before-kills", writer_now())
        Path(KILL_CRIU).write_text(json.dumps({"dump": unit(7779), "restore": unit(7778)}))
        Path(FILL_VAR).touch()
        # The spoiler makes one image of LOOSE readable by others once it is checkpointed.
        Path(LOOSEN).touch()
        sh("systemctl", "start", "seamless-criu-killer.service")
        set_phase("killed")
        rc, out = sh("seamless-upgrade", "run", "--kernel", other_kernel())
        emit("kills-run", {"rc": rc, "out": out})
        if rc != 0:
            set_phase("failed")
    elif phase == "killed":
        emit("after-kills", after_kills())
        emit("writer-after-kills", writer_now())
        os.unlink(FILLER)
        for flag in (KILL_CRIU, FILL_VAR):
            Path(flag).unlink(missing_ok=True)
        sh("journalctl", "--flush")
        debug_dump()
        emit("non-root", non_root())
        # An upgrade whose manifest the spoiler cuts in half once the checkpoints are done.
        for _ in range(2):
            demo(7777, "INC")
        Path(GARBLE).touch()
        emit("writer-before-garbled", writer_now())
        set_phase("garbled")
        rc, out = sh("seamless-upgrade", "run", "--kernel", other_kernel())
        emit("garble-run", {"rc": rc, "out": out})
        if rc != 0:
            set_phase("failed")
    elif phase == "garbled":
        emit("after-garbled", bad_input_boot())
        emit("writer-after-garbled", writer_now())
        # A kexec by hand, nothing armed, with seamless.* words no upgrade wrote.
        target = other_kernel()
        words = [w for w in Path("/proc/cmdline").read_text().split() if not w.startswith("seamless")]
        words += MALFORMED
        emit("writer-before-malformed", writer_now())
        set_phase("malformed")
        rc, out = sh(
            "kexec",
            "-l",
            f"/boot/vmlinuz-{target}",
            f"--initrd=/boot/initrd.img-{target}",
            f"--command-line={' '.join(words)}",
        )
        emit("malformed-kexec", {"rc": rc, "out": out, "words": MALFORMED})
        if rc != 0:
            set_phase("failed")
            return
        sh("systemctl", "kexec")
    elif phase == "malformed":
        emit("after-malformed", bad_input_boot())
        emit("writer-after-malformed", writer_now())
        debug_dump()
        emit("done", {})
        set_phase("done")
        sh("systemctl", "poweroff")


def legacy_pmem():
    """The memmap= ranges this kernel keeps as persistent memory, from /proc/iomem."""
    lines = Path("/proc/iomem").read_text().splitlines()
    return [ln.strip() for ln in lines if "Persistent Memory (legacy)" in ln]


def grub_memmap():
    """The memmap= words in GRUB's configuration (what the next cold boot gets)."""
    text = Path("/boot/grub/grub.cfg").read_text()
    return sorted({w for w in text.split() if w.startswith("memmap=")})


def setup_boot(phase):
    """The reservation written the distribution's way: setup, a reboot through GRUB, an upgrade, remove."""
    facts = {
        "cmdline": Path("/proc/cmdline").read_text().strip(),
        "pmem": os.path.exists(PMEM),
        "legacy": legacy_pmem(),
        "grub": grub_memmap(),
    }
    if phase == "":
        emit("setup-before", facts)
        rc, out = sh("seamless-upgrade", "setup", "--size", "512M")
        again = sh("seamless-upgrade", "setup", "--size", "512M")
        emit(
            "setup",
            {
                "rc": rc,
                "out": out,
                "again": again,
                "grub": grub_memmap(),
                "dropin": read_or_none("/etc/default/grub.d/seamless.cfg"),
            },
        )
        if rc != 0:
            set_phase("failed")
            raise SystemExit(f"setup failed: {out}")
        set_phase("set-up")
        sh("systemctl", "reboot")
    elif phase == "set-up":
        rc, plan = sh("seamless-upgrade", "plan")
        emit("reserved", {**facts, "plan": plan, "plan_rc": rc})
        for _ in range(3):
            demo(7777, "INC")
        emit("before", all_states())
        start_upgrade("seamless-upgrade", "run")
    elif phase == "upgraded":
        finish = wait_for_finish()
        emit(
            "after",
            {
                "states": all_states(),
                "finish": finish,
                "report": report(),
                "uname": os.uname().release,
                **facts,
            },
        )
        rc, out = sh("seamless-upgrade", "setup", "--remove")
        emit("removed", {"rc": rc, "out": out, "grub": grub_memmap()})
        set_phase("removed")
        sh("systemctl", "reboot")
    elif phase == "removed":
        emit("unreserved", {**facts, "states": all_states()})
        emit("package", package_lifecycle())
        emit("done", {})
        set_phase("done")
        sh("systemctl", "poweroff")


DEB = "/var/cache/seamless-test/seamless-systemd.deb"  # the package the image was made with


def ours_loaded():
    """What systemd still has of the package: our units loaded, and drop-ins of ours on the demos."""
    _, units = sh(
        "systemctl", "list-units", "--all", "--plain", "--no-legend", "seamless-*", "kexec-upgrade*"
    )
    # UNIT LOAD ACTIVE SUB DESCRIPTION: the test's own units aside, none of ours may be loaded.
    rows = [ln.split() for ln in units.splitlines() if ln.strip()]
    mine = [
        " ".join(r[:4])
        for r in rows
        if len(r) > 1
        and r[1] == "loaded"
        and not r[0].startswith(("seamless-demo@", "seamless-test", "seamless-spoiler"))
    ]
    dropins = {str(p): unit_state(unit(p))["DropInPaths"] for p in PORTS}
    generated = sorted(str(f) for d in Path("/run/systemd").glob("generator*") for f in d.rglob("*seamless*"))
    return {"units": mine, "dropins": dropins, "generated": generated}


def package_lifecycle():
    """Install over it while an upgrade is armed, remove, purge: the services never notice."""
    out = {}
    out["setup"] = sh("seamless-upgrade", "setup", "--size", "256M")
    for _ in range(2):
        demo(7777, "INC")
    out["arm"] = sh("seamless-upgrade", "arm")
    out["armed"] = json.loads(sh("seamless-upgrade", "status", "--json")[1])["armed"] is not None
    out["states_before"] = all_states()
    # Installed over itself, removed, purged: the triggers of the three run once at the end, as apt
    # runs those of one transaction (initramfs-tools' takes some 4 minutes under TCG each time:
    # tests/vm/lab/package-steps.sh). The drivers this VM needs only (MODULES=dep, as many an admin
    # sets): 69 s instead of 195 s under TCG (tests/vm/lab/initramfs-modules.sh); what is checked
    # is our hook's files, not the kernel's modules.
    Path("/etc/initramfs-tools/conf.d/zz-test-modules.conf").write_text("MODULES=dep\n")
    out["upgrade"] = sh("dpkg", "--no-triggers", "-i", DEB)
    status = json.loads(sh("seamless-upgrade", "status", "--json")[1])
    out["after_upgrade"] = {
        "armed": status["armed"],
        "ram": status["ram"],
        "kexec_loaded": status["kexec_loaded"],
    }
    for step, flag in (("remove", "-r"), ("purge", "-P")):
        out[step] = sh("dpkg", "--no-triggers", flag, "seamless-systemd")
        out[f"after_{step}"] = {
            **ours_loaded(),
            "command": os.path.exists("/usr/bin/seamless-upgrade"),
            "config": os.path.exists("/etc/seamless/config.yaml"),
            "state_dir": os.path.exists("/var/lib/seamless"),
            "grub_dropin": os.path.exists("/etc/default/grub.d/seamless.cfg"),
            "grub": grub_memmap(),
            "states": all_states(),
        }
    out["triggers"] = sh("dpkg", "--triggers-only", "--pending")
    # Every initramfs: how many files, which of ours. The trigger rebuilt the newest kernel's; the
    # other one is still the image's, made with the package installed (ours in it).
    out["rebuilt"] = re.findall(r"Generating (\S+)", out["triggers"][1])
    out["initramfs"] = {}
    for img in sorted(glob.glob("/boot/initrd.img-*")):
        files = sh("lsinitramfs", img)[1].splitlines()
        out["initramfs"][img] = {"files": len(files), "ours": [f for f in files if "seamless" in f]}
    return out


def main():
    os.makedirs(STATE, exist_ok=True)
    scenario = Path("/etc/seamless-test/scenario").read_text().strip()
    phase = Path(PHASE).read_text().strip() if os.path.exists(PHASE) else ""
    emit(
        "boot",
        {
            "scenario": scenario,
            "phase": phase,
            "kernel": os.uname().release,
            "cmdline": Path("/proc/cmdline").read_text().strip(),
            "initramfs_last_pid": read_or_none("/run/seamless/initramfs-last-pid"),
            "initramfs": read_or_none("/run/seamless/initramfs"),
            "pid_base": read_or_none("/run/seamless/pid-base"),
            "systemd": sh("systemctl", "--version")[1].split("\n", 1)[0],
            "os": read_or_none("/etc/debian_version"),
        },
    )
    if scenario == "bench":
        # The benchmark's runs (bench.py), one measured kernel switch each.
        import bench

        bench.main()
        return
    if scenario == "lab":
        # A developer's experiment: run lab.sh once, show its output, power off.
        p = subprocess.run(["sh", "/usr/local/lib/seamless-test/lab.sh"], capture_output=True, text=True)
        emit("lab", {"rc": p.returncode, "out": (p.stdout + p.stderr)[-20000:]})
        emit("done", {})
        sh("systemctl", "poweroff")
        return
    if scenario == "faults":
        faults(phase)
        return
    if scenario == "power":
        power(phase)
        return
    if scenario == "setup":
        setup_boot(phase)
        return
    if phase == "" and scenario == "workload":
        emit("before", {"workload": run_scripts("before.sh"), "units": workload_units()})
    elif phase == "":
        for _ in range(3):
            demo(7777, "INC")
        demo(7778, "INC")
        demo(7779, "INC")
        if scenario == "full":
            start_container()
            refused_upgrade()
            touch_types()
            emit("tcp-before", host_client("connect", 2))
            emit("tcp-ctr-before", host_client("connect", 2, "container", 7792))
            emit("types-before", types_state())
            emit("resources-before", resources("before"))
        emit("before", all_states())
    if phase == "":
        if os.path.exists(PMEM):
            emit("pmem-access", pmem_access())
        if scenario == "full":
            # The kernel hook, as run-parts calls it once B's package is installed.
            target = other_kernel()
            rc, out = sh(KERNEL_HOOK, target, f"/boot/vmlinuz-{target}")
            emit("kernel-hook", {"rc": rc, "out": out, "status": sh("seamless-upgrade", "status")[1]})
            emit("dbus", dbus_api())
        rc, out = sh("seamless-upgrade", "plan")
        emit("plan", {"rc": rc, "out": out})
        if scenario == "full":
            Path(SPOIL).touch()  # set_phase syncs it to disk
            start_upgrade("systemctl", "start", "kexec-upgrade.target")
        else:
            start_upgrade("seamless-upgrade", "run")
    elif phase == "upgraded":
        if os.path.exists(SPOIL):
            os.unlink(SPOIL)
        finish = wait_for_finish()
        if scenario == "workload":
            emit(
                "after",
                {
                    "workload": run_scripts("after.sh"),
                    "units": workload_units(),
                    "finish": finish,
                    "report": report(),
                    "uname": os.uname().release,
                },
            )
        else:
            emit(
                "after",
                {"states": all_states(), "finish": finish, "report": report(), "uname": os.uname().release},
            )
        rc, svg = sh("seamless-upgrade", "report", "--svg", "-")
        emit("timeline", {"rc": rc, "svg": svg})
        debug_dump()
        if scenario != "full":
            emit("done", {})
            set_phase("done")
            sh("systemctl", "poweroff")
            return
        emit("types-after", types_state())
        emit("stop-was-clean", stop_was_clean("seamless-exec.service"))
        emit("tcp-after", host_client("talk", 3))
        emit("tcp-ctr-after", host_client("talk", 3, "container", 7792))
        emit("resources-after", resources("after"))
        # Why plan refuses PrivateUsers= (docs/design.md): the kernel's rules, on this kernel.
        _, rules = sh("python3", "/usr/local/lib/seamless-test/userns_rules.py")
        emit("userns-rules", {"kernel": os.uname().release, **json.loads(rules)})
        # The .socket unit still works: stop the restored service, the next client starts it afresh.
        sh("systemctl", "stop", "seamless-sockact.service")
        emit(
            "sockact-again",
            {"reply": demo(SOCKACT), "socket": unit_state("seamless-sockact.socket")["ActiveState"]},
        )
        emit("sockact-tcp", clients(SOCKACT_TCP))
        emit("sockact-udp", clients(SOCKACT_UDP))
        rc, out = sh("systemctl", "reload", "seamless-notify.service")
        emit("types-reload", {"rc": rc, "out": out, "reply": demo(7781)})
        demo(7777, "INC")
        set_phase("armed-kexec")
        target = other_kernel()
        rc, out = sh("seamless-upgrade", "arm", "--kernel", target)
        emit("arm", {"rc": rc, "out": out, "target": target})
        if rc != 0:
            set_phase("failed")
            raise SystemExit(f"arm failed: {out}")
        # Restarted after arm: the new tree (new MainPID, new children) is the one to dump.
        old = unit_state(RESTARTED)
        sh("systemctl", "restart", RESTARTED)
        new = unit_state(RESTARTED)
        _, cg = sh("systemctl", "show", RESTARTED, "-p", "ControlGroup", "--value")
        emit(
            "restarted-while-armed",
            {
                "before": old["MainPID"],
                "after": new["MainPID"],
                "pids": cgroup_pids(cg.strip()),
                "reply": demo(7784),
            },
        )
        # Outgrows the PMEM after arm: its dump must be refused, the others' must not suffer.
        sh("systemctl", "kill", "-s", "USR1", "--kill-whom=main", GROWER)
        for _ in range(120):
            log = sh("journalctl", "-b", "-u", GROWER, "-o", "cat", "--no-pager")[1]
            if "grew to" in log:
                break
            time.sleep(1)
        emit("grown", {"log": log.splitlines()[-3:]})
        rc, out = sh("systemctl", "kexec")
        emit("kexec", {"rc": rc, "out": out})
    elif phase == "armed-kexec":
        after_upgrade("after2")
        emit("sockact-tcp-again", sockact_again(SOCKACT_TCP, "seamless-sockact-tcp"))
        emit("sockact-udp-again", sockact_again(SOCKACT_UDP, "seamless-sockact-udp"))
        rc, out = sh("seamless-upgrade", "arm")
        _, status = sh("seamless-upgrade", "status", "--json")
        emit("arm2", {"rc": rc, "out": out, "status": json.loads(status)})
        set_phase("rebooted")
        sh("systemctl", "reboot")
    elif phase == "rebooted":
        reports = sorted(os.listdir("/var/lib/seamless/reports"))
        emit(
            "rebooted",
            {
                "states": all_states(),
                "uname": os.uname().release,
                "cmdline": Path("/proc/cmdline").read_text().strip(),
                "reports": reports,
                "pmem_mounted": os.path.ismount("/run/seamless/pmem"),
            },
        )
        # A fleet tool's reboot command: refused (a unit CRIU cannot dump), it reboots the ordinary way.
        sh("systemctl", "start", "seamless-blocker.service")
        with open(BLOCKER_CONF, "w") as f:
            f.write("units: [seamless-blocker.service]\n")
        set_phase("fell-back")
        # Its word is kept on disk and said by the next boot: the shutdown it starts stops this
        # driver. SIGTERM is ignored (and so by seamless-upgrade too) until the exit status is written.
        sh(
            "sh",
            "-c",
            f"trap '' TERM; seamless-upgrade run --or-reboot > {OR_REBOOT}.out 2>&1; "
            f"echo $? > {OR_REBOOT}.rc; sync",
        )
        os.sync()
        if Path(f"{OR_REBOOT}.rc").read_text().strip() != "0":
            set_phase("failed")
            raise SystemExit(f"run --or-reboot did neither: {Path(f'{OR_REBOOT}.out').read_text()}")
    elif phase == "fell-back":
        emit(
            "or-reboot",
            {"rc": int(Path(f"{OR_REBOOT}.rc").read_text()), "out": Path(f"{OR_REBOOT}.out").read_text()},
        )
        os.unlink(BLOCKER_CONF)
        _, status = sh("seamless-upgrade", "status")
        emit(
            "fell-back",
            {
                "states": all_states(),
                "uname": os.uname().release,
                "cmdline": Path("/proc/cmdline").read_text().strip(),
                "report": report(),
                "status": status,
            },
        )
        emit("journal", journal_said())
        emit("done", {})
        set_phase("done")
        sh("systemctl", "poweroff")
    else:
        emit("idle", {"phase": phase})
        sh("systemctl", "poweroff")


if __name__ == "__main__":
    try:
        main()
    except BaseException as e:
        emit("error", {"error": repr(e)})
        debug_dump()
        sh("systemctl", "poweroff")
        raise
