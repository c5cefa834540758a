#!/usr/bin/python3
"""before/after checks of the memcached workload (memcached keeps nothing on disk).

check.py save    store a random value, note the server's PID and uptime
check.py verify  the same server still has the value
"""

import json
import secrets
import socket
import sys
from pathlib import Path

SAVED = Path("/var/lib/seamless-workload-memcached.json")


def talk(cmd: bytes, end: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", 11211), timeout=10) as s:
        s.sendall(cmd)
        data = b""
        while not data.endswith(end):
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
        return data


def stats() -> dict:
    lines = talk(b"stats\r\n", b"END\r\n").decode().splitlines()
    return {p[1]: p[2] for p in (ln.split() for ln in lines) if len(p) == 3 and p[0] == "STAT"}


def get() -> str:
    reply = talk(b"get seamless\r\n", b"END\r\n").decode().splitlines()
    return reply[1] if len(reply) >= 3 and reply[0].startswith("VALUE") else ""


if sys.argv[1] == "save":
    value = secrets.token_hex(16)
    assert talk(f"set seamless 0 0 {len(value)}\r\n{value}\r\n".encode(), b"\r\n") == b"STORED\r\n"
    st = stats()
    state = {"value": value, "pid": int(st["pid"]), "uptime": int(st["uptime"])}
    SAVED.write_text(json.dumps(state))
    print(f"memcached: PID {state['pid']}, uptime {state['uptime']} s")
else:
    saved = json.loads(SAVED.read_text())
    st = stats()
    now = {"value": get(), "pid": int(st["pid"]), "uptime": int(st["uptime"])}
    print(f"before: {saved}")
    print(f"after:  {now}")
    assert now["value"] == saved["value"], "the value is gone: a fresh memcached"
    assert now["pid"] == saved["pid"] and now["uptime"] >= saved["uptime"]
    print("memcached kept its process and its in-memory value")
