#!/usr/bin/python3
"""A service under a hardened unit: a random token in memory, and what it may touch.

hold.py PORT  answers on 127.0.0.1:PORT, one line per connection:
  GET    {"token", "pid", "counter"}: state only this process holds
  PROBE  for each path in PROBED, what this process can do there, seen from
         inside its sandbox: "w" (write), "r" (read), "-" (neither)
"""

import json
import os
import secrets
import socket
import sys

PROBED = [
    "/usr",
    "/etc",
    "/boot",
    "/home",
    "/root",
    "/run/user",
    "/srv/seamless-secret",
    "/tmp",
    "/var/tmp",
    "/var/cache/seamless-scratch",
    "/opt/seamless-bind-rw",
    "/opt/seamless-bind-ro",
    "/dev/vda",
    "/proc/sys/kernel",
    "/sys/fs/cgroup",
    "/var/lib",
    "/var/log",
]


def can(path: str) -> str:
    """What this process can do at PATH: try to create a file there (or open it for writing)."""
    if os.path.isdir(path):
        probe = os.path.join(path, f".seamless-probe-{os.getpid()}")
        try:
            os.close(os.open(probe, os.O_CREAT | os.O_WRONLY | os.O_EXCL, 0o600))
            os.unlink(probe)
            return "w"
        except OSError:
            pass
        try:
            os.listdir(path)
            return "r"
        except OSError:
            return "-"
    try:
        os.close(os.open(path, os.O_WRONLY))
        return "w"
    except OSError:
        pass
    try:
        os.close(os.open(path, os.O_RDONLY))
        return "r"
    except OSError:
        return "-"


def main() -> None:
    port = int(sys.argv[1])
    token = secrets.token_hex(16)
    counter = 0
    dirs = [
        os.environ.get(k, "")
        for k in (
            "STATE_DIRECTORY",
            "CACHE_DIRECTORY",
            "LOGS_DIRECTORY",
            "RUNTIME_DIRECTORY",
            "CONFIGURATION_DIRECTORY",
        )
    ]
    srv = socket.socket()
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("127.0.0.1", port))
    srv.listen()
    while True:
        conn, _ = srv.accept()
        with conn:
            cmd = conn.makefile().readline().strip()
            if cmd == "PROBE":
                out = {p: can(p) for p in PROBED + [d for d in dirs if d]}
            else:
                counter += 1
                out = {"token": token, "pid": os.getpid(), "counter": counter}
            conn.sendall((json.dumps(out) + "\n").encode())


if __name__ == "__main__":
    main()
