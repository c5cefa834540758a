"""The NBD server's side of the protocol, over a real socketpair, on memory laid out by page order."""

from __future__ import annotations

import mmap
import os
import socket
import threading

from seamless_systemd import nbd

PAGE = 8192


def request(
    sock: socket.socket, cmd: int, handle: bytes, offset: int, length: int, data: bytes = b""
) -> None:
    sock.sendall(nbd.REQUEST.pack(nbd.REQUEST_MAGIC, cmd, handle, offset, length) + data)


def reply(sock: socket.socket) -> tuple[int, bytes]:
    magic, error, handle = nbd.REPLY.unpack(sock.recv(nbd.REPLY.size, socket.MSG_WAITALL))
    assert magic == nbd.REPLY_MAGIC
    return error, handle


def test_reads_and_writes_land_on_the_pages_of_the_layout() -> None:
    mem = mmap.mmap(-1, 4 * PAGE)
    store = nbd.Store(mem, PAGE, [2, 0, 3, 1])  # logical page 0 is the mapping's page 2, …
    ours, kernel = socket.socketpair()
    server = threading.Thread(target=nbd.serve, args=(ours, store))
    server.start()
    try:
        data = os.urandom(PAGE + 100)
        request(
            kernel, nbd.CMD_WRITE, b"w1".ljust(8), PAGE - 50, len(data), data
        )  # across pages 0 and 1 and 2
        assert reply(kernel) == (0, b"w1".ljust(8))
        assert mem[3 * PAGE - 50 : 3 * PAGE] == data[:50]  # logical page 0 = mapping page 2
        assert mem[0:PAGE] == data[50 : 50 + PAGE]  # logical page 1 = mapping page 0
        assert mem[3 * PAGE : 3 * PAGE + 50] == data[50 + PAGE :]  # logical page 2 = mapping page 3
        request(kernel, nbd.CMD_READ, b"r1".ljust(8), PAGE - 50, len(data))
        assert reply(kernel) == (0, b"r1".ljust(8))
        assert kernel.recv(len(data), socket.MSG_WAITALL) == data
        request(kernel, nbd.CMD_READ, b"r2".ljust(8), 4 * PAGE - 10, 20)  # past the end
        assert reply(kernel) == (nbd.EINVAL, b"r2".ljust(8))
        request(kernel, nbd.CMD_FLUSH, b"f".ljust(8), 0, 0)
        assert reply(kernel) == (0, b"f".ljust(8))
        request(kernel, nbd.CMD_DISC, b"d".ljust(8), 0, 0)
        server.join(10)
        assert not server.is_alive()
    finally:
        kernel.close()
        ours.close()
