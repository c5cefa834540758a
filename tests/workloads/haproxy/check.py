#!/usr/bin/python3
"""before/after checks of the haproxy workload (master-worker, Debian's unit and config).

check.py save    send a few requests, note the master and worker PIDs and the worker's
                 request counter ('show info' on Debian's admin socket)
check.py verify  the same processes answer, the counter went on from where it was, and
                 the stats and master CLI sockets are still reachable
"""

import http.client
import json
import socket
import subprocess
import sys
from pathlib import Path

SAVED = Path("/var/lib/seamless-workload-haproxy.json")


def get() -> str:
    conn = http.client.HTTPConnection("127.0.0.1", 8404, timeout=10)
    conn.request("GET", "/")
    resp = conn.getresponse()
    body = resp.read().decode()
    assert resp.status == 200, resp.status
    return body


def info() -> dict:
    """The worker's 'show info' on Debian's stats socket."""
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(10)
        s.connect("/run/haproxy/admin.sock")
        s.sendall(b"show info\n")
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    pairs = (ln.split(":", 1) for ln in data.decode().splitlines() if ":" in ln)
    return {k.strip(): v.strip() for k, v in pairs}


def master_answers() -> bool:
    """The master's CLI socket (-S in Debian's unit) takes a connection."""
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(10)
        s.connect("/run/haproxy-master.sock")
        s.sendall(b"show proc\n")
        data = b""
        while b"master" not in data and (chunk := s.recv(65536)):
            data += chunk
        return b"master" in data


def state() -> dict:
    main = subprocess.run(
        ["systemctl", "show", "-p", "MainPID", "--value", "haproxy"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    pids = subprocess.run(["pgrep", "-x", "haproxy"], capture_output=True, text=True).stdout.split()
    i = info()
    return {
        "main": int(main),
        "all": sorted(map(int, pids)),
        "worker": int(i["Pid"]),
        "requests": int(i["CumReq"]),
        "master_cli": master_answers(),
    }


if sys.argv[1] == "save":
    for _ in range(5):
        get()
    st = state()
    SAVED.write_text(json.dumps(st))
    print(f"haproxy: {st}")
else:
    saved = json.loads(SAVED.read_text())
    page = get()
    now = state()
    print(f"before: {saved}")
    print(f"after:  {now}")
    assert page == "hello from haproxy\n", page
    assert (now["main"], now["all"], now["worker"]) == (saved["main"], saved["all"], saved["worker"])
    assert now["requests"] > saved["requests"], "the request counter starts again: a fresh haproxy"
    # Both sockets are bound to a temporary name and renamed into place: still reachable.
    assert now["master_cli"], "the master CLI socket does not answer"
    print("haproxy kept its master, its worker and its counters")
