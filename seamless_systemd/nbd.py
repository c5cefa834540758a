"""A block device served from memory we hold: the kernel's NBD client on a socketpair.

RAM on demand (docs/ram-on-demand.md) keeps the images in hugetlb pages, and
hugetlbfs has no write(): no loop device or file system can sit on it. So
this serves /dev/nbdN from a mapping of those pages, in the order ``layout``
gives (logical page i is the mapping's page layout[i]: the pages in physical
order, as the new kernel's device-mapper table will lay out its pmem
devices). The protocol is NBD's transmission phase only (the kernel client is
configured by ioctl, no handshake): 28-byte requests, 16-byte replies, data
after a read reply or a write request.
"""

from __future__ import annotations

import contextlib
import fcntl
import mmap
import os
import socket
import struct
import threading
from collections.abc import Sequence

REQUEST = struct.Struct(">II8sQI")  # magic, type (flags in the high 16 bits), handle, offset, length
REPLY = struct.Struct(">II8s")  # magic, error, handle
REQUEST_MAGIC = 0x25609513
REPLY_MAGIC = 0x67446698
CMD_READ, CMD_WRITE, CMD_DISC, CMD_FLUSH, CMD_TRIM = 0, 1, 2, 3, 4
EINVAL = 22

# <linux/nbd.h>: _IO(0xab, n)
NBD_SET_SOCK = 0xAB00
NBD_SET_BLKSIZE = 0xAB01
NBD_DO_IT = 0xAB03
NBD_CLEAR_SOCK = 0xAB04
NBD_CLEAR_QUE = 0xAB05
NBD_SET_SIZE_BLOCKS = 0xAB07
NBD_DISCONNECT = 0xAB08
NBD_SET_FLAGS = 0xAB0A
FLAG_HAS_FLAGS = 1 << 0
FLAG_SEND_FLUSH = 1 << 2
FLAG_SEND_TRIM = 1 << 5
BLOCK = 4096


class Store:
    """LENGTH bytes of MEM seen in logical order: logical page i is MEM's page LAYOUT[i]."""

    def __init__(self, mem: mmap.mmap, page: int, layout: Sequence[int]) -> None:
        self.mem, self.page, self.layout = mem, page, list(layout)
        self.size = page * len(self.layout)

    def _pieces(self, offset: int, length: int) -> list[tuple[int, int]]:
        out = []
        while length:
            i, within = divmod(offset, self.page)
            n = min(length, self.page - within)
            out.append((self.layout[i] * self.page + within, n))
            offset, length = offset + n, length - n
        return out

    def read(self, offset: int, length: int) -> bytes:
        return b"".join(self.mem[a : a + n] for a, n in self._pieces(offset, length))

    def write(self, offset: int, data: bytes | memoryview) -> None:
        view = memoryview(data)
        done = 0
        for a, n in self._pieces(offset, len(view)):
            self.mem[a : a + n] = view[done : done + n]
            done += n


def _recv_exactly(sock: socket.socket, n: int) -> bytes | None:
    buf = bytearray(n)
    view = memoryview(buf)
    got = 0
    while got < n:
        k = sock.recv_into(view[got:])
        if k == 0:
            return None
        got += k
    return bytes(buf)


def serve(sock: socket.socket, store: Store) -> None:
    """Answer the kernel's requests on SOCK until it disconnects."""
    while True:
        head = _recv_exactly(sock, REQUEST.size)
        if head is None:
            return
        magic, kind, handle, offset, length = REQUEST.unpack(head)
        if magic != REQUEST_MAGIC:
            raise OSError(EINVAL, f"NBD request with a bad magic {magic:#x}")
        cmd = kind & 0xFFFF
        bad = offset + length > store.size
        if cmd == CMD_READ:
            sock.sendall(REPLY.pack(REPLY_MAGIC, EINVAL if bad else 0, handle))
            if not bad:
                sock.sendall(store.read(offset, length))
        elif cmd == CMD_WRITE:
            data = _recv_exactly(sock, length)
            if data is None:
                return
            if not bad:
                store.write(offset, data)
            sock.sendall(REPLY.pack(REPLY_MAGIC, EINVAL if bad else 0, handle))
        elif cmd == CMD_DISC:
            return
        else:  # FLUSH (the pages are the storage), TRIM (nothing to free)
            sock.sendall(REPLY.pack(REPLY_MAGIC, 0, handle))


class Device:
    """/dev/nbdN attached to STORE, served by threads of this process until close()."""

    def __init__(self, path: str, store: Store) -> None:
        if store.size % BLOCK:
            raise ValueError(f"{store.size} bytes is not a whole number of {BLOCK}-byte blocks")
        self.path = path
        self.fd = os.open(path, os.O_RDWR)
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        self._sock, self._theirs = ours, theirs
        fcntl.ioctl(self.fd, NBD_SET_BLKSIZE, BLOCK)
        fcntl.ioctl(self.fd, NBD_SET_SIZE_BLOCKS, store.size // BLOCK)
        fcntl.ioctl(self.fd, NBD_SET_FLAGS, FLAG_HAS_FLAGS | FLAG_SEND_FLUSH | FLAG_SEND_TRIM)
        fcntl.ioctl(self.fd, NBD_SET_SOCK, theirs.fileno())
        self.error: BaseException | None = None
        self._server = threading.Thread(target=self._serve, args=(store,), daemon=True)
        self._client = threading.Thread(target=self._do_it, daemon=True)
        self._server.start()
        self._client.start()

    def _serve(self, store: Store) -> None:
        try:
            serve(self._sock, store)
        except BaseException as e:  # reported by close()
            self.error = e
        finally:
            # The kernel's client returns from NBD_DO_IT only when the socket closes.
            with contextlib.suppress(OSError):
                self._sock.shutdown(socket.SHUT_RDWR)

    def _do_it(self) -> None:
        with contextlib.suppress(OSError):  # an error here is a disconnect too
            fcntl.ioctl(self.fd, NBD_DO_IT)  # returns when the device is disconnected

    def close(self) -> None:
        """Disconnect (after the file system on it is unmounted) and detach."""
        with contextlib.suppress(OSError):
            fcntl.ioctl(self.fd, NBD_DISCONNECT)
        self._client.join(30)
        for call in (NBD_CLEAR_QUE, NBD_CLEAR_SOCK):
            with contextlib.suppress(OSError):
                fcntl.ioctl(self.fd, call)
        self._sock.close()
        self._theirs.close()
        self._server.join(30)
        os.close(self.fd)
        if self.error is not None:
            raise self.error
