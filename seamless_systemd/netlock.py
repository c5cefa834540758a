"""Open TCP connections across the kexec: no reset before the restore.

CRIU dumps an established connection with TCP repair mode (--tcp-established)
and, while it dumps, drops the connection's packets with iptables rules so
the kernel does not answer them; the tree is then killed without the kernel
sending a FIN or RST. After the kexec the new kernel knows nothing of the
connection: a segment the peer retransmits before the restore would be
answered with a reset, and the peer would drop the connection. So the new
boot drops those segments too, from before the network comes up
(seamless-restore.service runs before network-pre.target) until the unit's
tree is restored, with one iptables chain per unit. Connections over the
loopback device need none: their peer is on this machine.
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import ipaddress
import json
import os
import shutil
import socket
import struct
import sys
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

from seamless_systemd import procs, sockets
from seamless_systemd.errors import CommandError, SeamlessError
from seamless_systemd.log import log
from seamless_systemd.run import run

CHAIN_PREFIX = "SEAMLESS-"
# A connection as recorded at the checkpoint: local address, port, remote address, port.
Conn = Sequence[object]


ANY = ("0.0.0.0", "::")


def available() -> bool:
    """Whether CRIU can lock connections (it runs iptables) and so can we."""
    return shutil.which("iptables") is not None and shutil.which("ip6tables") is not None


def chain(unit: str) -> str:
    # iptables chain names hold at most 28 characters.
    return CHAIN_PREFIX + hashlib.sha256(unit.encode()).hexdigest()[:12]


def _tool(ip: str) -> str:
    return "ip6tables" if ":" in ip and not ip.startswith("::ffff:") else "iptables"


def _plain(ip: str) -> str:
    return ip.removeprefix("::ffff:")


def lock(unit: str, conns: Iterable[Conn]) -> int:
    """Drop incoming segments of UNIT's dumped connections; return how many are locked.

    One iptables-restore run per address family puts up the chain, its jump
    from INPUT and every rule: the lock is on the restore's path (the network
    waits for it), and under emulation each iptables run costs some 0.3 s.
    """
    name = chain(unit)
    rules: dict[str, list[str]] = {}
    for local, lport, remote, rport in conns:
        local_ip, remote_ip = str(local), str(remote)
        try:
            # Checked, as they go into iptables-restore's input: addresses and ports, nothing else.
            peer = f"-s {ipaddress.ip_address(_plain(remote_ip))} --sport {_port(rport)}"
            # A container's connection comes in through a published port on any local address.
            here = "" if local_ip in ANY else f"-d {ipaddress.ip_address(_plain(local_ip))} "
            here += f"--dport {_port(lport)}"
        except ValueError as e:
            raise SeamlessError(f"a recorded connection of {unit} is not an address and port: {e}") from e
        rules.setdefault(_tool(remote_ip), []).append(f"-A {name} -p tcp {peer} {here} -j DROP")
    for tool, lines in rules.items():
        text = "\n".join(["*filter", f":{name} - [0:0]", f"-I INPUT -j {name}", *lines, "COMMIT", ""])
        run([f"{tool}-restore", "-w", "--noflush"], input=text)
    return sum(map(len, rules.values()))


def _port(value: object) -> int:
    port = int(str(value))
    if not 0 < port < 65536:
        raise ValueError(f"port {value}")
    return port


def unlock(unit: str) -> None:
    """Remove UNIT's chain (both address families), if there is one."""
    remove_chain(chain(unit))


def let_through(unit: str, conns: Iterable[Conn]) -> None:
    """Empty UNIT's chain for the address families of CONNS: their segments come in again.

    One iptables run per family, where removing the chain takes four: the
    peers are nudged (nudge) right after this, and the chain removed after
    that (unlock). The benchmark's packet capture showed the nudge 1.4 s
    after CRIU's own first window probe while the chain was being removed.
    """
    for tool in sorted({_tool(str(c[2])) for c in conns if not sockets.is_loopback(str(c[2]))}):
        if shutil.which(tool) is not None:
            try:
                run([tool, "-w", "-F", chain(unit)], check=False)
            except (CommandError, OSError) as e:  # unlock removes the chain all the same
                log.warning("Could not empty the chain of %s: %s", unit, e)


def leftover_chains() -> list[str]:
    out: set[str] = set()
    for tool in ("iptables", "ip6tables"):
        if shutil.which(tool) is None:
            continue
        try:
            rules = run([tool, "-w", "-S"]).stdout
        except CommandError:
            continue
        out.update(ln.split()[1] for ln in rules.splitlines() if ln.startswith(f"-N {CHAIN_PREFIX}"))
    return sorted(out)


def remove_chain(name: str) -> None:
    for tool in ("iptables", "ip6tables"):
        if shutil.which(tool) is None:
            continue
        while run([tool, "-w", "-D", "INPUT", "-j", name], check=False).returncode == 0:
            pass
        run([tool, "-w", "-F", name], check=False)
        run([tool, "-w", "-X", name], check=False)


def wait_for_addresses(addresses: Iterable[str], timeout: float) -> list[str]:
    """Wait until this machine has ADDRESSES (the network came up); return the missing ones."""
    missing = sorted(set(addresses))
    deadline = time.monotonic() + timeout
    while True:
        missing = [a for a in missing if not _is_local(a)]
        if not missing or time.monotonic() > deadline:
            return missing
        log.debug("Waiting for address(es) %s", ", ".join(missing))
        # Often: each tenth of a second here is one the restored connections are not answered.
        time.sleep(0.1)


def _is_local(ip: str) -> bool:
    family = socket.AF_INET6 if ":" in ip else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        try:
            s.bind((ip, 0))
        except OSError:
            return False
    return True


# After the restore, a peer that sent while the service was gone waits for its
# own retransmission timer, which has backed off through the whole downtime
# (seconds to minutes). Each time a socket leaves TCP repair mode, the kernel
# sends a window probe (an ACK for what it has): three in a row are three
# duplicate ACKs, and a peer whose stack counts them (BSD-derived stacks such
# as QEMU's user network) retransmits at once (fast retransmit) instead of at
# its next timeout. A duplicate ACK must carry the window the peer knows:
# the first probe may still update it (see repair_window_scales), so four.
# A Linux peer drops them as old segments and is unharmed.
NUDGES = 4
TCP_REPAIR = 19
_SYS_PIDFD_GETFD = 438


def _tree_sockets(
    pids: Iterable[int], wanted: set[tuple[str, int, str, int]] | None
) -> Iterator[tuple[Any, int]]:
    """Each established TCP socket of the processes PIDS (of WANTED, or all), as our own copy of its fd.

    The copy (pidfd_getfd) is closed once the caller goes on to the next one.
    """
    by_inode = {ino: s for ino, s in sockets.inet_sockets().items() if s.established}
    libc = ctypes.CDLL(None, use_errno=True)
    done: set[int] = set()
    for pid in pids:
        try:
            pidfd = os.pidfd_open(pid)
        except OSError:
            continue
        try:
            for fd, target in procs.fds(pid).items():
                ino = procs.socket_inode(target)
                sock = by_inode.get(ino) if ino is not None else None
                if ino is None or sock is None or ino in done:
                    continue
                if wanted is not None and sock.connection() not in wanted:
                    continue
                mine = libc.syscall(_SYS_PIDFD_GETFD, pidfd, fd, 0)
                if mine < 0:
                    continue
                done.add(ino)
                try:
                    yield sock, mine
                finally:
                    os.close(mine)
        finally:
            os.close(pidfd)


@contextlib.contextmanager
def _reuse_kept(fd: int) -> Iterator[None]:
    """SO_REUSEADDR of the socket FD as it was before, once the block's TCP repairs are done.

    Leaving TCP repair mode resets it (the kernel's sk_reuse goes to "no";
    CRIU sets it back after its restore, and these repairs come after CRIU's).
    Without it, the connection, closed when the service stops, lingers as a
    FIN-WAIT-2 or TIME-WAIT socket for a minute and keeps the service's next
    listener from binding its port: a restart of the service fails with
    "Address already in use".
    """
    with socket.socket(fileno=os.dup(fd)) as s:
        reuse = s.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR)
        try:
            yield
        finally:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, reuse)


def nudge(pids: Iterable[int], conns: Iterable[Conn]) -> int:
    """Ask the peers of the restored trees' connections CONNS to retransmit now; how many were asked.

    Window probes for a BSD-derived peer (above), and "host unreachable" for a
    Linux one (unreachable_for).
    """
    wanted = {(str(c[0]), int(str(c[1])), str(c[2]), int(str(c[3]))) for c in conns}
    if not wanted:
        return 0
    libc = ctypes.CDLL(None, use_errno=True)
    nudged = 0
    for sock, fd in _tree_sockets(pids, wanted):
        try:
            with _reuse_kept(fd):
                _setsockopt(libc, fd, TCP_REPAIR, 1)
                _setsockopt(libc, fd, TCP_REPAIR_QUEUE, TCP_RECV_QUEUE)
                peer_una = _getsockopt_u32(libc, fd, TCP_QUEUE_SEQ)
                _setsockopt(libc, fd, TCP_REPAIR, 0)
                for _ in range(NUDGES - 1):
                    _setsockopt(libc, fd, TCP_REPAIR, 1)
                    _setsockopt(libc, fd, TCP_REPAIR, 0)
            local, lport, remote, rport = sock.connection()
            send_unreachable(local, lport, remote, rport, peer_una)
            nudged += 1
        except OSError as e:
            log.debug("Could not nudge the peer of %s: %s", sock.connection(), e)
    return nudged


# A Linux peer in retransmission backoff takes no notice of duplicate ACKs
# (it is in its Loss state), but it does of ICMP "host unreachable" for the
# segment it keeps retransmitting (RFC 6069, Linux's tcp_ld_RTO_revert): each
# one undoes one doubling of its timeout and, once the time since its last
# try exceeds the shorter timeout, it retransmits at once. One message per
# doubling (at most 15, tcp_retries2's default) brings it back from any
# backoff. The error it also records is a soft one, as when a router on the
# path sent it during an outage: the connection goes on. A stack that ignores
# such messages (QEMU's user network) is unharmed.
UNREACHABLES = 15
TCP_REPAIR_QUEUE = 20
TCP_QUEUE_SEQ = 21
TCP_RECV_QUEUE = 1


def _inet_checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total = sum(int.from_bytes(data[i : i + 2], "big") for i in range(0, len(data), 2))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def unreachable_for(local: str, lport: int, remote: str, rport: int, peer_una: int) -> tuple[int, bytes]:
    """(address family, ICMP message) saying "host unreachable" about the peer's segment at PEER_UNA.

    The message quotes the segment's IP header and first 8 TCP bytes as the
    peer sent it (from REMOTE:RPORT to LOCAL:LPORT), which is how the peer's
    kernel finds the connection and the segment.
    """
    local, remote = _plain(local), _plain(remote)
    tcp8 = struct.pack("!HHI", rport, lport, peer_una)
    if ":" not in remote:
        ip = struct.pack(
            "!BBHHHBBH4s4s", 0x45, 0, 40, 0, 0, 64, socket.IPPROTO_TCP, 0,
            socket.inet_aton(remote), socket.inet_aton(local),
        )  # fmt: skip
        ip = ip[:10] + struct.pack("!H", _inet_checksum(ip)) + ip[12:]
        body = struct.pack("!BBHI", 3, 1, 0, 0) + ip + tcp8  # destination unreachable: host
        return socket.AF_INET, body[:2] + struct.pack("!H", _inet_checksum(body)) + body[4:]
    ip6 = struct.pack(
        "!IHBB16s16s", 6 << 28, 20, socket.IPPROTO_TCP, 64,
        socket.inet_pton(socket.AF_INET6, remote), socket.inet_pton(socket.AF_INET6, local),
    )  # fmt: skip
    # Destination unreachable: no route (the code Linux reverts on); the kernel sums ICMPv6.
    return socket.AF_INET6, struct.pack("!BBHI", 1, 0, 0, 0) + ip6 + tcp8


def send_unreachable(local: str, lport: int, remote: str, rport: int, peer_una: int) -> None:
    """UNREACHABLES "host unreachable" messages from LOCAL to REMOTE about its segment at PEER_UNA."""
    family, message = unreachable_for(local, lport, remote, rport, peer_una)
    proto = socket.IPPROTO_ICMP if family == socket.AF_INET else socket.IPPROTO_ICMPV6
    with socket.socket(family, socket.SOCK_RAW, proto) as s:
        s.bind((_plain(local), 0))
        for _ in range(UNREACHABLES):
            s.sendto(message, (_plain(remote), 0))


def _getsockopt_u32(libc: Any, fd: int, option: int) -> int:
    val = ctypes.c_uint32(0)
    size = ctypes.c_uint32(ctypes.sizeof(val))
    if libc.getsockopt(fd, socket.IPPROTO_TCP, option, ctypes.byref(val), ctypes.byref(size)) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return int(val.value)


# A connection whose ends never agreed on window scaling (RFC 7323; QEMU's user
# network, slirp4netns and other small stacks do not offer it) is restored by
# CRIU 4.1.1 with the receive window scale the kernel picks for a new
# connection (CRIU sets the scales only when the dump had them): the restored
# end then shifts its window right by up to 14 bits before advertising it to
# a peer that does not shift it back, e.g. 64236 bytes sent as 4. The peer may
# then send only a few bytes per round trip, and the window probes above no
# longer count as duplicate ACKs (their window differs). Before the restored
# tree resumes (CRIU's post-restore action), such a socket is given the scales
# it had, none: TCP repair's window option with 0 and 0.
TCP_INFO = 11
TCP_REPAIR_OPTIONS = 22
TCP_REPAIR_OFF_NO_WP = -1
TCPOPT_WINDOW = 3
TCPI_OPT_WSCALE = 4


def window_scales(info: bytes) -> tuple[bool, int, int]:
    """From struct tcp_info: whether scaling was agreed, the send and the receive scale."""
    if len(info) < 7:
        raise ValueError(f"tcp_info of {len(info)} bytes")
    return bool(info[5] & TCPI_OPT_WSCALE), info[6] & 0x0F, info[6] >> 4


def repair_window_scales(pids: Iterable[int]) -> list[str]:
    """Give the established sockets of PIDS that never agreed on scaling their scales, none (above).

    Returns their connections ("LOCAL LPORT REMOTE RPORT").
    """
    libc = ctypes.CDLL(None, use_errno=True)
    fixed = []
    for sock, fd in _tree_sockets(pids, None):
        with socket.socket(fileno=os.dup(fd)) as s:
            # tcp_info shows the scales only when they were agreed: the one the
            # kernel picked is hidden, so every connection without scaling gets 0 and 0.
            agreed, _, _ = window_scales(s.getsockopt(socket.IPPROTO_TCP, TCP_INFO, 104))
        if agreed:
            continue
        try:
            with _reuse_kept(fd):
                _setsockopt(libc, fd, TCP_REPAIR, 1)
                try:
                    # struct tcp_repair_opt: code, snd | rcv << 16
                    _setsockopt(libc, fd, TCP_REPAIR_OPTIONS, (ctypes.c_uint32 * 2)(TCPOPT_WINDOW, 0))
                finally:
                    _setsockopt(libc, fd, TCP_REPAIR, TCP_REPAIR_OFF_NO_WP)
            fixed.append(" ".join(map(str, sock.connection())))
        except OSError as e:
            log.warning("Could not give %s its window scale back: %s", sock.connection(), e)
    return fixed


class ScalesHelper:
    """restore-unit's side of the window-scale repair: done in its own process when CRIU's action asks.

    The action (libexec/criu-action, post-restore) writes the restored tree's root PID to
    PATH.ask and waits for PATH; this thread answers with repair_window_scales' list.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.ask = path.with_name(path.name + ".ask")
        self.error: str | None = None
        self.answered = False
        self.ask.unlink(missing_ok=True)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.wait(0.02):
            try:
                pid = self.ask.read_text().strip()
            except FileNotFoundError:
                continue
            except OSError as e:
                self.error = str(e)
                return
            self.error = repair_tree(pid, self.path)
            self.answered = True
            return

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


def repair_tree(pid: str, out: Path) -> str | None:
    """repair_window_scales for the tree of PID (text, from CRIU); what was fixed to OUT as JSON
    (written whole, then renamed). Why nothing was checked, or None."""
    fixed: list[str] = []
    why = None
    try:
        fixed = repair_window_scales(procs.tree(int(pid))) if pid.isdigit() else []
    except (OSError, ValueError) as e:
        why = f"TCP window scales not checked: {e}"
    try:
        tmp = out.with_name(out.name + ".tmp")
        tmp.write_text(json.dumps(fixed) + "\n")
        tmp.rename(out)
    except OSError as e:
        why = why or f"TCP window scales not recorded: {e}"
    return why


def repair_main() -> int:
    """criu-action at post-restore: repair_tree for CRTOOLS_INIT_PID, to SEAMLESS_TCP_SCALES (a file
    restore-unit reads). Never fails the restore."""
    pid, out = os.environ.get("CRTOOLS_INIT_PID", ""), os.environ.get("SEAMLESS_TCP_SCALES", "")
    why = repair_tree(pid, Path(out)) if out else None
    if why:
        print(f"seamless criu-action: {why}", file=sys.stderr)
    return 0


def _setsockopt(libc: Any, fd: int, option: int, value: Any) -> None:
    """TCP option OPTION of our fd FD: VALUE, an int or a ctypes structure."""
    val = ctypes.c_int(value) if isinstance(value, int) else value
    if libc.setsockopt(fd, socket.IPPROTO_TCP, option, ctypes.byref(val), ctypes.sizeof(val)) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
