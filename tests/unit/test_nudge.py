"""netlock.nudge on a real TCP connection of this machine: window probes, the connection unharmed."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

from seamless_systemd import netlock


def _win_probes() -> int:
    """The kernel's count of window probes sent (TcpExt TCPWinProbe), in this network namespace."""
    lines = [
        line.split()
        for line in Path("/proc/net/netstat").read_text().splitlines()
        if line.startswith("TcpExt:")
    ]
    return int(dict(zip(lines[0], lines[1], strict=True))["TCPWinProbe"])


def test_nudge_sends_window_probes_and_the_connection_still_works() -> None:
    if os.geteuid() != 0:
        pytest.skip("TCP repair mode needs CAP_NET_ADMIN")
    srv = socket.create_server(("127.0.0.1", 0))
    client = socket.create_connection(srv.getsockname())
    conn, _ = srv.accept()
    with srv, client, conn:
        local, remote = conn.getsockname(), conn.getpeername()
        record = [local[0], local[1], remote[0], remote[1]]
        before = _win_probes()
        assert netlock.nudge([os.getpid()], [record]) == 1
        assert _win_probes() - before == netlock.NUDGES
        assert netlock.nudge([os.getpid()], [["127.0.0.1", 1, "127.0.0.1", 2]]) == 0
        conn.sendall(b"still here")
        assert client.recv(100) == b"still here"
        client.sendall(b"and back")
        assert conn.recv(100) == b"and back"
