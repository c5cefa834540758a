"""A restored service can start again at once after it stops: netlock's repairs keep SO_REUSEADDR.

Leaving TCP repair mode resets a socket's SO_REUSEADDR (the kernel sets its
sk_reuse to "no" at TCP_REPAIR off). CRIU sets it back after its restore,
but restore-unit's own repairs of the restored connections come after CRIU's
(netlock.nudge, netlock.repair_window_scales). Without it, those connections,
closed when the service stops, linger as FIN-WAIT-2 and TIME-WAIT sockets for
a minute, and keep the service's next listener from binding its port
(EADDRINUSE): a restored server could not be restarted for 60 s (the
benchmark found it, 2026-12-08, when it first started a restored service
again in the same boot). Real kernel, real sockets; needs root (TCP repair
is CAP_NET_ADMIN, the nudge's ICMP a raw socket).
"""

from __future__ import annotations

import os
import socket

import pytest

from seamless_systemd import netlock

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="TCP repair mode and raw sockets need root")


def test_a_nudged_service_binds_its_port_again_at_once() -> None:
    srv = socket.create_server(("127.0.0.1", 0))  # SO_REUSEADDR, as most servers set it
    port = srv.getsockname()[1]
    client = socket.create_connection(("127.0.0.1", port))
    conn = srv.accept()[0]
    try:
        assert netlock.nudge([os.getpid()], [(*conn.getsockname()[:2], *conn.getpeername()[:2])]) == 1
        assert conn.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR) == 1
        # The service stops: its end of the connection closes first (the client's stays
        # open: FIN-WAIT-2), then its listener. It starts again and binds its port.
        conn.close()
        srv.close()
        socket.create_server(("127.0.0.1", port)).close()
    finally:
        client.close()
        conn.close()
        srv.close()


def test_a_connection_given_its_scales_back_keeps_so_reuseaddr() -> None:
    a, b = (socket.socket() for _ in range(2))
    with a, b:
        try:
            a.setsockopt(socket.IPPROTO_TCP, netlock.TCP_REPAIR, 1)
        except PermissionError:
            pytest.skip("no TCP repair mode here")
        # Connected in repair mode, as CRIU restores a connection: no handshake, no scaling agreed.
        b.bind(("127.0.0.1", 0))
        a.bind(("127.0.0.1", 0))
        a.connect(b.getsockname())
        a.setsockopt(socket.IPPROTO_TCP, netlock.TCP_REPAIR, netlock.TCP_REPAIR_OFF_NO_WP)
        a.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # what CRIU does after repair off
        fixed = netlock.repair_window_scales([os.getpid()])
        assert any(f.split()[1] == str(a.getsockname()[1]) for f in fixed), fixed
        assert a.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR) == 1
