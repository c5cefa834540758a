#!/usr/bin/python3
"""before/after checks of the php8.2-fpm workload: master and the www pool.

The pool's status page (pm.status_path, the one setting turned on) is asked
for over FastCGI on the pool's unix socket, as a web server would.

check.py save    note the master's and the pool workers' PIDs, the pool's start time and
                 how many requests it accepted (counters in the master's shared memory)
check.py verify  the same processes, the same start time, the counter went on
"""

import json
import socket
import struct
import subprocess
import sys
from pathlib import Path

SAVED = Path("/var/lib/seamless-workload-php-fpm.json")
SOCKET = "/run/php/php8.2-fpm.sock"


def _record(kind: int, body: bytes) -> bytes:
    return struct.pack(">BBHHBx", 1, kind, 1, len(body), 0) + body


def _pair(name: str, value: str) -> bytes:
    out = b""
    for s in (name.encode(), value.encode()):
        out += struct.pack(">B", len(s)) if len(s) < 128 else struct.pack(">I", len(s) | 1 << 31)
    return out + name.encode() + value.encode()


def fastcgi(script: str, query: str) -> str:
    """One FastCGI request (responder role), the body of its response."""
    params = {
        "SCRIPT_NAME": script,
        "SCRIPT_FILENAME": script,
        "REQUEST_METHOD": "GET",
        "QUERY_STRING": query,
    }
    req = _record(1, struct.pack(">HB5x", 1, 0))  # BEGIN_REQUEST, responder
    req += _record(4, b"".join(_pair(k, v) for k, v in params.items())) + _record(4, b"") + _record(5, b"")
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(10)
        s.connect(SOCKET)
        s.sendall(req)
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    out, pos = b"", 0
    while pos + 8 <= len(data):
        _, kind, _, length, pad = struct.unpack(">BBHHBx", data[pos : pos + 8])
        if kind == 6:  # STDOUT
            out += data[pos + 8 : pos + 8 + length]
        pos += 8 + length + pad
    return out.decode().split("\r\n\r\n", 1)[1]


def state() -> dict:
    st = json.loads(fastcgi("/status", "json"))
    show = subprocess.run(
        ["systemctl", "show", "-p", "MainPID", "-p", "ControlGroup", "--value", "php8.2-fpm"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    main, cgroup = show[0], show[1]
    pids = Path(f"/sys/fs/cgroup{cgroup}/cgroup.procs").read_text().split()
    return {
        "main": int(main),
        "all": sorted(map(int, pids)),
        "start": st["start time"],
        "accepted": st["accepted conn"],
        "pool": st["pool"],
    }


if sys.argv[1] == "save":
    for _ in range(3):
        state()
    st = state()
    SAVED.write_text(json.dumps(st))
    print(f"php-fpm: {st}")
else:
    saved = json.loads(SAVED.read_text())
    now = state()
    print(f"before: {saved}")
    print(f"after:  {now}")
    assert (now["main"], now["all"], now["start"], now["pool"]) == (
        saved["main"],
        saved["all"],
        saved["start"],
        saved["pool"],
    )
    assert now["accepted"] > saved["accepted"], "the pool counts from zero again: a fresh php-fpm"
    print("php-fpm kept its master, its pool and its counters")
