#!/usr/bin/python3
"""The guest side of the VM scenario: one step per boot, the phase kept on disk.

Each step prints 'SEAMLESS-TEST <event> <json>' lines on the serial console,
which the host harness (tests/vm/vm.py) reads. Phases:
  (none)        boot 1, kernel A: touch the demo's state, plan, run the upgrade
  upgraded      boot 2, after kexec: read the state back, the report; reboot
  rebooted      boot 3, ordinary reboot: the demo started afresh; power off
"""

import json
import os
import socket
import subprocess
import time

STATE = "/var/lib/seamless-test"
PHASE = f"{STATE}/phase"
UNIT = "seamless-demo.service"


def emit(event, data):
    line = f"SEAMLESS-TEST {event} {json.dumps(data)}\n"
    with open("/dev/ttyS0", "w") as tty:
        tty.write(line)
    print(line, end="", flush=True)


def sh(*argv, timeout=600):
    p = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    return p.returncode, p.stdout + p.stderr


def set_phase(phase):
    with open(PHASE + ".tmp", "w") as f:
        f.write(phase)
        f.flush()
        os.fsync(f.fileno())
    os.rename(PHASE + ".tmp", PHASE)
    os.sync()


def demo(cmd="GET"):
    for _ in range(60):
        try:
            with socket.create_connection(("127.0.0.1", 7777), timeout=10) as s:
                s.sendall(cmd.encode() + b"\n")
                return json.loads(s.makefile().readline())
        except OSError:
            time.sleep(1)
    raise SystemExit("the demo service does not answer")


def unit_state():
    _, out = sh("systemctl", "show", UNIT, "-p", "MainPID,ActiveState,SubState,NRestarts,ExecMainStartTimestampMonotonic")
    props = dict(line.split("=", 1) for line in out.splitlines() if "=" in line)
    props["fresh_starts"] = sh("journalctl", "-b", "-u", UNIT, "-o", "cat", "--grep", "starting fresh")[1].count("starting fresh")
    props["journal_tail"] = sh("journalctl", "-b", "-u", UNIT, "-o", "cat", "-n", "5")[1].splitlines()
    return props


def wait_for_finish():
    for _ in range(300):
        rc, out = sh("systemctl", "show", "seamless-restore-finish.service", "-p", "ActiveState")
        if out.strip() in ("ActiveState=active", "ActiveState=failed"):
            return out.strip()
        time.sleep(1)
    return "timeout"


def debug_dump():
    for cmd in (["journalctl", "-b", "-1", "-o", "short-monotonic", "--no-pager", "-u", "seamless-*", "-u", UNIT],
                ["journalctl", "-b", "-o", "short-monotonic", "--no-pager", "-u", "seamless-*", "-u", UNIT],
                ["systemctl", "--failed", "--no-pager"]):
        emit("debug", {"cmd": cmd, "out": sh(*cmd)[1][-6000:]})


def main():
    os.makedirs(STATE, exist_ok=True)
    phase = open(PHASE).read().strip() if os.path.exists(PHASE) else ""
    emit("boot", {"phase": phase, "kernel": os.uname().release, "cmdline": open("/proc/cmdline").read().strip()})
    if phase == "":
        demo("INC")
        demo("INC")
        before = demo("INC")
        emit("before", {"state": before, "unit": unit_state()})
        rc, out = sh("seamless-upgrade", "plan")
        emit("plan", {"rc": rc, "out": out})
        set_phase("upgraded")
        rc, out = sh("seamless-upgrade", "run")
        emit("run", {"rc": rc, "out": out})
        if rc != 0:
            debug_dump()
            set_phase("failed")
            sh("systemctl", "poweroff")
    elif phase == "upgraded":
        finish = wait_for_finish()
        after = demo("GET")
        _, rep = sh("seamless-upgrade", "report", "--json")
        try:
            report = json.loads(rep)
        except ValueError:
            report = {"unparsed": rep}
        emit("after", {"state": after, "unit": unit_state(), "finish": finish, "report": report,
                       "dropins": sh("systemctl", "show", UNIT, "-p", "DropInPaths")[1].strip()})
        debug_dump()
        after_inc = demo("INC")
        emit("after-inc", {"state": after_inc})
        set_phase("rebooted")
        sh("systemctl", "reboot")
    elif phase == "rebooted":
        state = demo("GET")
        emit("rebooted", {"state": state, "unit": unit_state()})
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
