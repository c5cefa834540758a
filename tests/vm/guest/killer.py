#!/usr/bin/python3
"""seamless-systemd test: kill CRIU midway through one unit's dump (at the kexec shutdown) or restore.

/var/lib/seamless-test/kill-criu names them: {"dump": UNIT, "restore": UNIT}.
Midway means: for the dump, once CRIU has seized the unit's main process
(its TracerPid is CRIU); for the restore, once CRIU has forked the tree's root
(a process in the unit whose parent is CRIU). CRIU is then sent SIGKILL, as
the OOM killer or an impatient admin would. Each kill is reported on the
serial console as a 'SEAMLESS-TEST criu-killed-KIND' event.
"""

import json
import os
import signal
import time
from pathlib import Path

ORDERS = json.loads(Path("/var/lib/seamless-test/kill-criu").read_text())


def cgroup_of(unit):
    """The cgroup.procs of template instance UNIT (system-PREFIX.slice), once it runs."""
    prefix = unit.split("@", 1)[0].replace("-", "\\x2d")
    path = f"/sys/fs/cgroup/system.slice/system-{prefix}.slice/{unit}/cgroup.procs"
    return path if os.path.exists(path) else None


def pids_in(procs_file):
    try:
        return [int(x) for x in Path(procs_file).read_text().split()]
    except OSError:
        return []


def field(pid, name):
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(name + ":"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def comm(pid):
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return None


def say(event, data):
    line = f"SEAMLESS-TEST {event} {json.dumps(data)}\n"
    print(line, end="", flush=True)
    with open("/dev/ttyS0", "w") as tty:
        tty.write(line)


def midway(kind, criu, pids):
    """The tasks CRIU holds half done: seized (dump) or forked (restore)."""
    if kind == "dump":
        argv = Path(f"/proc/{criu}/cmdline").read_bytes().split(b"\0")
        tree = int(argv[argv.index(b"--tree") + 1]) if b"--tree" in argv else None
        return [tree] if tree is not None and field(tree, "TracerPid") == str(criu) else []
    return [p for p in pids if p != criu and field(p, "PPid") == str(criu)]


def main():
    # kind -> the cgroup CRIU runs in: the checkpoint hook's unit (dump), the unit itself (restore).
    where = {"dump": f"seamless-checkpoint@{ORDERS['dump']}.service", "restore": ORDERS["restore"]}
    where = {k: v for k, v in where.items() if k in ORDERS}
    files = {}
    while where:
        for kind, unit in list(where.items()):
            files[kind] = files.get(kind) or cgroup_of(unit)
            if not files[kind]:
                continue
            pids = pids_in(files[kind])
            for criu in (p for p in pids if comm(p) == "criu"):
                try:
                    held = midway(kind, criu, pids)
                except (OSError, ValueError):
                    continue
                if not held:
                    continue
                os.kill(criu, signal.SIGKILL)
                # At once: at the shutdown this unit is stopped right after the checkpoint.
                say(f"criu-killed-{kind}", {"unit": ORDERS[kind], "criu": criu, "held": held})
                del where[kind]
                break
        time.sleep(0.002 if any(files.values()) else 0.02)


main()
