"""A TCP connection restored without window scaling gets its scales back (netlock).

CRIU 4.1.1 restores a connection whose ends never agreed on window scaling
(RFC 7323) without giving the kernel any window option, and the kernel then
keeps the receive scale it picked for a new connection: the restored end
shifts its window right before advertising it, to a peer that does not shift
it back. Here both ends are made the way CRIU makes one: connected in TCP
repair mode (no handshake, so no scaling agreed), with their sequence numbers
and windows set. The window each end sees from the other is read back through
TCP repair too. This needs root (TCP repair is CAP_NET_ADMIN), as restore-unit has.
"""

from __future__ import annotations

import json
import os
import socket
import struct
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from seamless_systemd import netlock

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="TCP repair mode needs root")

TCP_REPAIR_QUEUE, TCP_QUEUE_SEQ, TCP_REPAIR_WINDOW = 20, 21, 29
RECV_QUEUE, SEND_QUEUE = 1, 2
ACTION = Path(__file__).resolve().parents[2] / "libexec" / "criu-action"
WINDOW = 60000  # what each end advertised before the "dump": fits 16 bits, no scaling needed


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def scales(s: socket.socket) -> tuple[bool, int, int]:
    return netlock.window_scales(s.getsockopt(socket.IPPROTO_TCP, netlock.TCP_INFO, 104))


def repaired(here: int, there: int, send_seq: int, recv_seq: int) -> socket.socket:
    """One end of a connection put back as CRIU does: repair mode, sequences, connect, windows."""
    s = socket.socket()
    try:
        s.setsockopt(socket.IPPROTO_TCP, netlock.TCP_REPAIR, 1)
    except PermissionError:
        s.close()
        pytest.skip("no TCP repair mode here")
    for queue, seq in ((SEND_QUEUE, send_seq), (RECV_QUEUE, recv_seq)):
        s.setsockopt(socket.IPPROTO_TCP, TCP_REPAIR_QUEUE, queue)
        s.setsockopt(socket.IPPROTO_TCP, TCP_QUEUE_SEQ, seq)
    s.bind(("127.0.0.1", here))
    s.connect(("127.0.0.1", there))
    # struct tcp_repair_window: snd_wl1, snd_wnd, max_window, rcv_wnd, rcv_wup
    s.setsockopt(
        socket.IPPROTO_TCP, TCP_REPAIR_WINDOW, struct.pack("5I", recv_seq, WINDOW, WINDOW, WINDOW, recv_seq)
    )
    return s


def resume(s: socket.socket) -> None:
    s.setsockopt(socket.IPPROTO_TCP, netlock.TCP_REPAIR, netlock.TCP_REPAIR_OFF_NO_WP)


def send_window(s: socket.socket) -> int:
    """The window S may send into: what its peer advertised last."""
    s.setsockopt(socket.IPPROTO_TCP, netlock.TCP_REPAIR, 1)
    try:
        return int(struct.unpack("5I", s.getsockopt(socket.IPPROTO_TCP, TCP_REPAIR_WINDOW, 20))[1])
    finally:
        resume(s)


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    """(server, client): a connection as CRIU restores it, the server's end not yet resumed."""
    a, b = free_port(), free_port()
    server = repaired(a, b, 1000, 5000)
    client = repaired(b, a, 5000, 1000)
    resume(client)
    yield server, client
    server.close()
    client.close()


def window_after_a_request(server: socket.socket, client: socket.socket) -> int:
    client.sendall(b"GET\n")
    assert server.recv(16) == b"GET\n"
    time.sleep(0.2)  # the server's ACK, with its window
    return send_window(client)


def test_as_criu_restores_it_the_peer_sees_a_shrunken_window(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    server, client = pair
    resume(server)
    assert not scales(server)[0]
    # The kernel's own receive scale (7 and more) shifts ~60 KB down to a few hundred bytes or less.
    assert window_after_a_request(server, client) < WINDOW // 64


def test_with_its_scales_given_back_the_peer_sees_the_window(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    server, client = pair
    resume(server)
    fixed = netlock.repair_window_scales([os.getpid()])
    # Both ends were restored unscaled: both are given 0 and 0.
    assert len(fixed) == 2, fixed
    assert any(str(server.getsockname()[1]) in f.split()[1] for f in fixed), fixed
    assert scales(server) == (True, 0, 0) and scales(client) == (True, 0, 0)
    assert window_after_a_request(server, client) > WINDOW // 2
    assert netlock.repair_window_scales([os.getpid()]) == []  # once is enough


def test_a_connection_that_agreed_on_scaling_is_left_alone() -> None:
    with socket.create_server(("127.0.0.1", 0)) as listener:
        client = socket.create_connection(listener.getsockname())
        peer, _ = listener.accept()
        with client, peer:
            before = scales(client), scales(peer)
            assert before[0][0]  # Linux to Linux: scaling agreed
            assert netlock.repair_window_scales([os.getpid()]) == []
            assert (scales(client), scales(peer)) == before


def test_tcp_info_too_short_is_an_error() -> None:
    with pytest.raises(ValueError):
        netlock.window_scales(b"\x01\x00")


def test_criu_action_asks_restore_unit_to_repair(
    pair: tuple[socket.socket, socket.socket], tmp_path: Path
) -> None:
    """CRIU's post-restore action has restore-unit's own process repair the tree (ScalesHelper)."""
    server, client = pair
    resume(server)
    out = tmp_path / "unit.tcp-scales.json"
    helper = netlock.ScalesHelper(out)
    env = {
        **os.environ,
        "CRTOOLS_SCRIPT_ACTION": "post-restore",
        "CRTOOLS_INIT_PID": str(os.getpid()),
        "SEAMLESS_TCP_SCALES": str(out),
    }
    try:
        done = subprocess.run(["sh", str(ACTION)], env=env, timeout=60)
    finally:
        helper.stop()
    assert done.returncode == 0 and helper.answered and helper.error is None
    assert len(json.loads(out.read_text())) == 2
    assert scales(server) == (True, 0, 0) and window_after_a_request(server, client) > WINDOW // 2
