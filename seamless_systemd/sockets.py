"""Unix socket peers, from the kernel's sock_diag netlink interface.

CRIU refuses to dump a connected unix stream whose other end is outside the
dumped tree. A service's stdout/stderr are such streams: systemd connects
them to journald's /run/systemd/journal/stdout. We find them here, dump them
as external and give the restored process a fresh stream from its unit.
"""

from __future__ import annotations

import ctypes
import dataclasses
import ipaddress
import os
import socket
import struct
from pathlib import Path
from typing import Any

NETLINK_SOCK_DIAG = 4
SOCK_DIAG_BY_FAMILY = 20
NLM_F_REQUEST = 0x1
NLM_F_DUMP = 0x300
NLMSG_ERROR = 2
NLMSG_DONE = 3
UDIAG_SHOW_NAME = 0x1
UDIAG_SHOW_VFS = 0x2
UDIAG_SHOW_PEER = 0x4
UNIX_DIAG_NAME = 0
UNIX_DIAG_VFS = 1
UNIX_DIAG_PEER = 2
JOURNAL_STDOUT = "/run/systemd/journal/stdout"


@dataclasses.dataclass(frozen=True)
class UnixSocket:
    inode: int
    type: int  # socket.SOCK_STREAM, SOCK_DGRAM, SOCK_SEQPACKET
    state: int
    name: str  # bound path ("@…" for abstract), "" if unnamed
    peer: int  # inode of the peer, 0 if none
    vfs_ino: int = 0  # inode of the socket's file in the file system it is bound in, 0 if none


def unix_sockets() -> dict[int, UnixSocket]:
    """All unix sockets of this network namespace, by inode."""
    req = struct.pack(
        "=BBHIIIII",
        socket.AF_UNIX,
        0,
        0,
        0xFFFFFFFF,
        0,
        UDIAG_SHOW_NAME | UDIAG_SHOW_PEER | UDIAG_SHOW_VFS,
        0xFFFFFFFF,
        0xFFFFFFFF,
    )
    hdr = struct.pack("=IHHII", 16 + len(req), SOCK_DIAG_BY_FAMILY, NLM_F_REQUEST | NLM_F_DUMP, 1, 0)
    out: dict[int, UnixSocket] = {}
    with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_SOCK_DIAG) as nl:
        nl.sendto(hdr + req, (0, 0))
        while True:
            data = nl.recv(1 << 16)
            off = 0
            while off + 16 <= len(data):
                length, mtype, _flags, _seq, _pid = struct.unpack_from("=IHHII", data, off)
                if mtype == NLMSG_DONE:
                    return out
                if mtype == NLMSG_ERROR:
                    (err,) = struct.unpack_from("=i", data, off + 16)
                    raise OSError(-err, "sock_diag: " + os.strerror(-err))
                _parse(data[off + 16 : off + length], out)
                off += (length + 3) & ~3
            if off == 0:
                return out


def _parse(msg: bytes, out: dict[int, UnixSocket]) -> None:
    _family, stype, state, _pad, inode = struct.unpack_from("=BBBBI", msg, 0)
    name, peer, vfs_ino = "", 0, 0
    off = 16  # unix_diag_msg: 4 bytes + ino + 2 cookies
    while off + 4 <= len(msg):
        alen, atype = struct.unpack_from("=HH", msg, off)
        if alen < 4:
            break
        payload = msg[off + 4 : off + alen]
        if atype == UNIX_DIAG_NAME:
            if payload[:1] == b"\0":
                name = "@" + payload[1:].decode(errors="replace")
            else:
                name = payload.split(b"\0", 1)[0].decode(errors="replace")
        elif atype == UNIX_DIAG_PEER:
            (peer,) = struct.unpack_from("=I", payload)
        elif atype == UNIX_DIAG_VFS:
            (vfs_ino,) = struct.unpack_from("=I", payload)
        off += (alen + 3) & ~3
    out[inode] = UnixSocket(inode, stype, state, name, peer, vfs_ino)


def journal_streams(inodes: set[int], sockets: dict[int, UnixSocket] | None = None) -> set[int]:
    """Those of INODES that are stream sockets connected to journald's stdout socket."""
    socks = unix_sockets() if sockets is None else sockets
    found = set()
    for ino in inodes:
        s = socks.get(ino)
        if s is None or s.type != socket.SOCK_STREAM or not s.peer:
            continue
        peer = socks.get(s.peer)
        if peer is not None and peer.name == JOURNAL_STDOUT:
            found.add(ino)
    return found


@dataclasses.dataclass(frozen=True)
class InetSocket:
    inode: int
    proto: str  # "tcp", "tcp6", "udp", "udp6"
    local: str  # "ADDR:PORT" as the kernel prints it (hex)
    remote: str
    state: int  # TCP_* state; 10 = LISTEN

    @property
    def port(self) -> int:
        return int(self.local.rsplit(":", 1)[1], 16)

    @property
    def listening(self) -> bool:
        return self.state == TCP_LISTEN

    @property
    def established(self) -> bool:
        """A TCP connection (neither listening nor closed)."""
        return self.proto.startswith("tcp") and self.state not in (TCP_LISTEN, TCP_CLOSE)

    def connection(self) -> tuple[str, int, str, int]:
        """(local address, port, remote address, port)."""
        return (*decode_address(self.local), *decode_address(self.remote))

    @property
    def kind(self) -> str:
        """'tcp' for a listening TCP socket, 'udp' for an unconnected UDP one, '' otherwise."""
        if self.proto.startswith("tcp"):
            return "tcp" if self.listening else ""
        return "udp" if self.state == TCP_CLOSE else ""


TCP_LISTEN = 0x0A
TCP_CLOSE = 0x07


def inet_sockets(net: str = "/proc/net") -> dict[int, InetSocket]:
    """TCP and UDP sockets of our network namespace, by inode (from /proc/net/{tcp,udp}[6])."""
    out = {}
    for proto in ("tcp", "tcp6", "udp", "udp6"):
        try:
            lines = Path(net, proto).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            f = line.split()
            if len(f) > 9 and f[9].isdigit() and f[9] != "0":
                out[int(f[9])] = InetSocket(int(f[9]), proto, f[1], f[2], int(f[3], 16))
    return out


def decode_address(text: str) -> tuple[str, int]:
    """'0100007F:1F90' (as /proc/net/tcp prints it) -> ('127.0.0.1', 8080); IPv6 too."""
    addr, _, port = text.rpartition(":")
    raw = bytes.fromhex(addr)
    # The kernel prints each 32-bit word in host (little-endian) order.
    raw = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
    family = socket.AF_INET if len(raw) == 4 else socket.AF_INET6
    return socket.inet_ntop(family, raw), int(port, 16)


def is_loopback(ip: str) -> bool:
    return ip.startswith("127.") or ip == "::1" or ip.startswith("::ffff:127.")


SO_ATTACH_REUSEPORT_CBPF = 51
BPF_RET_K = 0x06  # BPF_RET | BPF_K: return a constant


def steer_port_group(sock: socket.socket, index: int) -> None:
    """Send every new connection on SOCK's port group (SO_REUSEPORT) to the group's INDEX-th member.

    The members are numbered in the order they joined (bound the port). A
    classic BPF program that returns INDEX does it; once fewer members are
    left, the kernel ignores the out-of-range answer and picks by its hash, so
    the remaining sockets get the connections again.
    """
    insn = ctypes.create_string_buffer(struct.pack("=HBBI", BPF_RET_K, 0, 0, index), 8)
    prog = struct.pack("@HP", 1, ctypes.addressof(insn))  # struct sock_fprog
    sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_REUSEPORT_CBPF, prog)


def same_address(name: Any, address: str, port: int) -> bool:
    """Whether getsockname()'s NAME is ADDRESS:PORT (as decode_address gives it)."""
    if not isinstance(name, tuple) or len(name) < 2 or name[1] != port:
        return False
    try:
        return bool(ipaddress.ip_address(name[0]) == ipaddress.ip_address(address))
    except ValueError:
        return False
