"""The capture reader of the benchmark's network (tests/vm/pcap.py), on a capture made here."""

from __future__ import annotations

import socket
import struct

from tests.vm import pcap

GUEST, CLIENT = "10.0.2.15", "10.0.2.2"


def frame(
    src: str, sport: int, dst: str, dport: int, seq: int, ack: int, flags: int, win: int, data: bytes
) -> bytes:
    tcp = struct.pack("!HHIIBBHHH", sport, dport, seq, ack, 5 << 4, flags, win, 0, 0) + data
    ip = struct.pack(
        "!BBHHHBBH4s4s", 0x45, 0, 20 + len(tcp), 0, 0, 64, 6, 0, socket.inet_aton(src), socket.inet_aton(dst)
    )
    return b"\x52\x54\x00\x12\x34\x56" * 2 + b"\x08\x00" + ip + tcp


def capture(frames: list[tuple[float, bytes]]) -> bytes:
    out = struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1)
    for at, f in frames:
        out += struct.pack("<IIII", int(at), int(at % 1 * 1e6), len(f), len(f)) + f
    return out


def test_a_request_that_waited_across_an_outage_and_its_answer() -> None:
    ask = frame(CLIENT, 40000, GUEST, 7796, 1000, 5000, 0x18, 65535, b"GET\n")
    data = capture(
        [
            (10.0, frame(CLIENT, 41000, GUEST, 7796, 1, 0, 0x02, 65535, b"")),  # another connection: a SYN
            (11.0, ask),
            (12.0, ask),
            (14.0, ask),
            (14.5, frame(GUEST, 7796, CLIENT, 40000, 5000, 1004, 0x10, 4, b"")),
        ]
    )
    segs = list(pcap.segments(data))
    assert len(segs) == 5 and segs[1].length == 4 and segs[4].window == 4
    got = pcap.waited(iter(segs), 7796)
    assert list(got) == [40000]
    assert [(s.at, pcap.flag_names(s.flags)) for s in got[40000]] == [
        (11.0, "PA"),
        (12.0, "PA"),
        (14.0, "PA"),
        (14.5, "A"),
    ]
