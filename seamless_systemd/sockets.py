"""Unix socket peers, from the kernel's sock_diag netlink interface.

CRIU refuses to dump a connected unix stream whose other end is outside the
dumped tree. A service's stdout/stderr are such streams: systemd connects
them to journald's /run/systemd/journal/stdout. We find them here, dump them
as external and give the restored process a fresh stream from its unit.
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import ipaddress
import os
import socket
import stat
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from seamless_systemd import procs

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


# Unix sockets renamed after bind() (see docs/design.md).
UNIX_LISTEN = 10


def renamed_after_bind(
    holders: dict[int, list[int]], socks: dict[int, UnixSocket], from_systemd: set[int]
) -> tuple[list[tuple[str, str]], list[str]]:
    """Listening unix sockets whose bound name no longer leads to them: (name, path now) pairs
    that can be carried across, and warnings for those that cannot.

    CRIU looks a socket's bound name up from the root of its mount namespace
    (criu/sk-unix.c, unix_resolve_name_old), and a name that does not lead to
    the socket's file makes it dump the socket as deleted: after the restore
    nothing can connect to it. A daemon that binds to a temporary name and
    renames the file into place (haproxy's stats and master sockets:
    /run/haproxy/admin.sock.PID.tmp -> admin.sock) is found by the file's
    inode in the same directory; the checkpoint then links the old name to
    the file for CRIU (bound_names_linked, around the dump), and the
    restore renames it back (rename_restored). A file removed, or moved elsewhere, is only warned of.
    """
    renamed, warnings = [], []
    roots: dict[int, Path] = {}
    for ino, pids in sorted(holders.items()):
        s = socks.get(ino)
        if s is None or ino in from_systemd or s.state != UNIX_LISTEN or not s.name.startswith("/"):
            continue
        root = roots.setdefault(pids[0], procs.mntns_root(pids[0]))
        if _socket_ino(root / s.name.lstrip("/")) == s.vfs_ino:
            continue
        now = _find_socket_file(root / os.path.dirname(s.name).lstrip("/"), s.vfs_ino) if s.vfs_ino else None
        if now is not None:
            renamed.append((s.name, os.path.join(os.path.dirname(s.name), now)))
            continue
        warnings.append(
            f"listens on the unix socket {s.name}, whose file is gone or was moved out of its directory: "
            "CRIU restores that socket without a path, so clients cannot connect to it after the upgrade"
        )
    return renamed, warnings


def _socket_ino(path: Path) -> int:
    try:
        st = os.stat(path)
    except OSError:
        return 0
    return st.st_ino if stat.S_ISSOCK(st.st_mode) else 0


def _find_socket_file(directory: Path, vfs_ino: int) -> str | None:
    """The name of the socket file with inode VFS_INO in DIRECTORY."""
    try:
        entries = list(os.scandir(directory))
    except OSError:
        return None
    for e in entries:
        try:
            if e.inode() == vfs_ino and stat.S_ISSOCK(e.stat(follow_symlinks=False).st_mode):
                return e.name
        except OSError:
            continue
    return None


def renamed_records(main_pid: int, renamed: tuple[tuple[str, str], ...]) -> list[dict[str, Any]]:
    """What the restore needs of each renamed socket: both names and its directory's owner and mode."""
    out = []
    root = procs.mntns_root(main_pid) if renamed else Path("/")
    for bound, now in renamed:
        st = os.stat(root / os.path.dirname(bound).lstrip("/"))
        out.append(
            {
                "bound": bound,
                "path": now,
                "dir_mode": st.st_mode & 0o7777,
                "dir_uid": st.st_uid,
                "dir_gid": st.st_gid,
            }
        )
    return out


def prepare_renamed(records: list[dict[str, Any]]) -> None:
    """Before the restore: the directory each renamed socket is bound in (CRIU binds its old name there)."""
    for r in records:
        d = Path(os.path.dirname(r["bound"]))
        if not d.is_absolute() or ".." in d.parts or d.exists():
            continue
        d.mkdir(parents=True)
        os.chown(d, r["dir_uid"], r["dir_gid"])
        os.chmod(d, r["dir_mode"])


def rename_restored(main_pid: int, records: list[dict[str, Any]]) -> list[str]:
    """After the restore: each renamed socket's file moved to where it was (its name now); the paths."""
    done: list[str] = []
    if not records:
        return done
    root = procs.mntns_root(main_pid)
    for r in records:
        with contextlib.suppress(OSError):
            os.rename(root / r["bound"].lstrip("/"), root / r["path"].lstrip("/"))
            done.append(r["path"])
    return done


@contextlib.contextmanager
def bound_names_linked(pid: int, renamed: tuple[tuple[str, str], ...]) -> Iterator[None]:
    """For the dump, the bound name of each renamed socket linked to its file again (see renamed_after_bind).

    Made through a descriptor of the directory as the tree sees it, so that the
    link goes again after CRIU has killed the tree.
    """
    made: list[tuple[int, str]] = []
    root = procs.mntns_root(pid) if renamed else Path("/")
    try:
        for bound, now in renamed:
            d = os.open(root / os.path.dirname(bound).lstrip("/"), os.O_PATH)
            try:
                os.link(os.path.basename(now), os.path.basename(bound), src_dir_fd=d, dst_dir_fd=d)
            except FileExistsError:
                os.close(d)
                continue
            made.append((d, os.path.basename(bound)))
        yield
    finally:
        for d, name in made:
            with contextlib.suppress(OSError):
                os.unlink(name, dir_fd=d)
            os.close(d)
