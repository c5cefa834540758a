#!/usr/bin/python3
"""The test's upstream DNS server for seamless.test (UDP, 127.0.0.1:5353).

Answers every A question with a fresh address (10.77.0.N, N counting the
questions it was asked) and a TTL of a day, so that an answer that comes back
later with the same address came from a cache.
"""

import socket
import struct

sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
sock.bind(("127.0.0.1", 5353))
asked = 0
while True:
    data, peer = sock.recvfrom(4096)
    qid, flags = struct.unpack(">HH", data[:4])
    end = 12
    while data[end]:
        end += data[end] + 1
    question = data[12 : end + 5]
    asked += 1
    answer = b"\xc0\x0c" + struct.pack(">HHIH", 1, 1, 86400, 4) + bytes([10, 77, 0, asked % 250 + 1])
    header = struct.pack(">HHHHHH", qid, 0x8580 | (flags & 0x0100), 1, 1, 0, 0)
    sock.sendto(header + question + answer, peer)
