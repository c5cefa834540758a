"""The TCP segments of a guest port in a QEMU network capture (SEAMLESS_QEMU_PCAP=1).

``python3 -m tests.vm.pcap build/bench/console-1.pcap 7796`` prints, for each
connection to that guest port that saw a segment sent three times or more
(one that waited across an outage), its segments from the first resend on:
time, direction, flags, sequence and acknowledgement numbers, window and
length. That is how the restored end's 4-byte window was found
(docs/criu-patches.md).
"""

from __future__ import annotations

import collections
import datetime
import struct
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple


class Segment(NamedTuple):
    at: float
    src: str
    sport: int
    dst: str
    dport: int
    seq: int
    ack: int
    flags: int
    window: int
    length: int


def segments(data: bytes) -> Iterator[Segment]:
    """The IPv4 TCP segments of a pcap file's bytes (Ethernet frames, as QEMU's filter-dump writes them)."""
    magic = struct.unpack("<I", data[:4])[0]
    order = "<" if magic in (0xA1B2C3D4, 0xA1B23C4D) else ">"
    nano = magic in (0xA1B23C4D, 0x4D3CB2A1)
    pos = 24
    while pos + 16 <= len(data):
        sec, frac, incl, _ = struct.unpack(order + "IIII", data[pos : pos + 16])
        frame = data[pos + 16 : pos + 16 + incl]
        pos += 16 + incl
        if len(frame) < 54 or frame[12:14] != b"\x08\x00" or frame[23] != 6:
            continue
        ip = frame[14:]
        ihl = (ip[0] & 15) * 4
        total = struct.unpack("!H", ip[2:4])[0]
        tcp = ip[ihl:total]
        sport, dport, seq, ack, off, flags, window = struct.unpack("!HHIIBBH", tcp[:16])
        yield Segment(
            sec + frac / (1e9 if nano else 1e6),
            ".".join(map(str, ip[12:16])),
            sport,
            ".".join(map(str, ip[16:20])),
            dport,
            seq,
            ack,
            flags,
            window,
            len(tcp) - (off >> 4) * 4,
        )


def flag_names(flags: int) -> str:
    return "".join(c for c, bit in zip("FSRPAU", (1, 2, 4, 8, 16, 32), strict=True) if flags & bit)


def waited(segs: Iterator[Segment], port: int) -> dict[int, list[Segment]]:
    """Per client port: each connection to guest PORT with a segment sent 3 times or more, from then on."""
    by_conn: dict[int, list[Segment]] = collections.defaultdict(list)
    sent: dict[tuple[int, int], list[float]] = collections.defaultdict(list)
    for s in segs:
        if port not in (s.sport, s.dport):
            continue
        client = s.sport if s.dport == port else s.dport
        by_conn[client].append(s)
        if s.dport == port and s.length:
            sent[(client, s.seq)].append(s.at)
    out = {}
    for (client, _), times in sent.items():
        if len(times) >= 3 and client not in out:
            out[client] = [s for s in by_conn[client] if s.at >= times[0]]
    return out


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    path, port = Path(argv[0]), int(argv[1])
    for client, segs in waited(segments(path.read_bytes()), port).items():
        print(f"connection from port {client}:")
        for s in segs:
            when = datetime.datetime.fromtimestamp(s.at, datetime.UTC).strftime("%H:%M:%S.%f")
            way = "->" if s.dport == port else "<-"
            numbers = f"seq={s.seq} ack={s.ack} win={s.window} len={s.length}"
            print(f"  {when} {way} {flag_names(s.flags):5} {numbers}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
