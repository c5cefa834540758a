#!/usr/bin/python3
"""before/after checks of the openssh workload: an interactive session from the host.

check.py save    ask the host to log in (ssh -tt, a real TCP connection through QEMU's
                 network) and to type into the remote shell: set a shell variable to a
                 random token and write the shell's PID and the variable to a file
check.py verify  ask the host to type into the same session again: the same shell (same
                 PID) still has the variable, the same sshd processes serve it
"""

import json
import secrets
import subprocess
import sys
import time
from pathlib import Path

SAVED = Path("/var/lib/seamless-workload-openssh.json")
BEFORE, AFTER = Path("/root/seamless-ssh-before"), Path("/root/seamless-ssh-after")


def ask_host(action: str, line: str) -> None:
    event = json.dumps({"action": action, "target": "ssh", "send": line})
    with open("/dev/ttyS0", "w") as tty:
        tty.write(f"SEAMLESS-TEST ssh-client {event}\n")


def wait_for(path: Path, seconds: int) -> str:
    for _ in range(seconds * 2):
        if path.exists() and path.read_text().strip():
            return path.read_text().strip()
        time.sleep(0.5)
    raise SystemExit(f"the session never wrote {path}")


def sshd_tree() -> list[str]:
    main = subprocess.run(
        ["systemctl", "show", "-p", "MainPID", "--value", "ssh"], capture_output=True, text=True, check=True
    ).stdout.strip()
    out = subprocess.run(
        ["ps", "-o", "pid=,args=", "--ppid", main, "-p", main], capture_output=True, text=True
    ).stdout
    return sorted(" ".join(ln.split()) for ln in out.splitlines())


if sys.argv[1] == "save":
    BEFORE.unlink(missing_ok=True)
    AFTER.unlink(missing_ok=True)
    token = secrets.token_hex(8)
    ask_host("connect", f'SEAMLESS_X={token}; echo "$$ $SEAMLESS_X $(tty)" > {BEFORE}')
    line = wait_for(BEFORE, 120)
    time.sleep(1)
    state = {"shell": line, "token": token, "sshd": sshd_tree()}
    SAVED.write_text(json.dumps(state))
    print(f"openssh: session {line}, sshd {state['sshd']}")
else:
    saved = json.loads(SAVED.read_text())
    ask_host("talk", f'echo "$$ $SEAMLESS_X $(tty)" > {AFTER}')
    line = wait_for(AFTER, 180)
    now = sshd_tree()
    print(f"before: {saved['shell']}, sshd {saved['sshd']}")
    print(f"after:  {line}, sshd {now}")
    assert line == saved["shell"], "not the same shell, or it lost its variable"
    assert saved["token"] in line
    assert now == saved["sshd"], "other sshd processes"
    print("the SSH session from the host kept its shell, its variable and its connection")
