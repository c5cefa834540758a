#!/usr/bin/python3
"""before/after checks of the unbound workload: its cache, over UDP and TCP.

check.py save    start the upstream (a transient unit, not preserved, gone with the old
                 boot), ask unbound for a few names over UDP and TCP, note the answers
check.py verify  no upstream any more: unbound answers the same names with the same
                 addresses, over UDP and TCP, from its cache (a fresh unbound would have
                 nobody to ask: SERVFAIL), and it is the same process
"""

import json
import random
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path

SAVED = Path("/var/lib/seamless-workload-unbound.json")
NAMES = ["one.seamless.test", "two.seamless.test", "three.seamless.test"]


def packet(name: str) -> bytes:
    qname = b"".join(bytes([len(p)]) + p.encode() for p in name.split(".")) + b"\0"
    return (
        struct.pack(">HHHHHH", random.randrange(65536), 0x0100, 1, 0, 0, 0) + qname + struct.pack(">HH", 1, 1)
    )


def address(reply: bytes) -> str:
    rcode = struct.unpack(">H", reply[2:4])[0] & 0xF
    if rcode or struct.unpack(">H", reply[6:8])[0] == 0:
        return f"rcode {rcode}"
    end = 12
    while reply[end]:
        end += reply[end] + 1
    rr = end + 5  # the first answer: name (a pointer), type, class, TTL, length, address
    return ".".join(str(b) for b in reply[rr + 12 : rr + 16])


def ask(name: str, tcp: bool) -> str:
    q = packet(name)
    if tcp:
        with socket.create_connection(("127.0.0.1", 53), timeout=10) as s:
            s.sendall(struct.pack(">H", len(q)) + q)
            data = b""
            while len(data) < 2 or len(data) < 2 + struct.unpack(">H", data[:2])[0]:
                chunk = s.recv(4096)
                if not chunk:
                    break
                data += chunk
            return address(data[2:])
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(10)
        s.sendto(q, ("127.0.0.1", 53))
        return address(s.recv(4096))


def main_pid() -> int:
    return int(
        subprocess.run(
            ["systemctl", "show", "-p", "MainPID", "--value", "unbound"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    )


def answers() -> dict:
    return {f"{n} {proto}": ask(n, proto == "tcp") for n in NAMES for proto in ("udp", "tcp")}


if sys.argv[1] == "save":
    subprocess.run(
        [
            "systemd-run",
            "--unit",
            "seamless-dns-upstream",
            "python3",
            str(Path(__file__).resolve().parent / "upstream.py"),
        ],
        check=True,
    )
    time.sleep(2)
    st = {"pid": main_pid(), "answers": answers()}
    subprocess.run(["systemctl", "stop", "seamless-dns-upstream"], check=True)
    SAVED.write_text(json.dumps(st))
    print(f"unbound: {st}")
else:
    saved = json.loads(SAVED.read_text())
    up = subprocess.run(["systemctl", "is-active", "seamless-dns-upstream"], capture_output=True, text=True)
    now = {"pid": main_pid(), "answers": answers()}
    print(f"before: {saved}")
    print(f"after:  {now} (upstream: {up.stdout.strip()})")
    assert up.stdout.strip() != "active", "the upstream runs: the answers could be fresh"
    assert all(a.startswith("10.77.0.") for a in saved["answers"].values()), saved
    assert now == saved, "unbound lost its cache, or is another process"
    print("unbound answered from its cache, over UDP and TCP, without its upstream")
