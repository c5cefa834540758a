"""What the guest's test services share: a TCP listener, one JSON line per request."""

import json
import socket


def listen_tcp(host, port, backlog=16):
    srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind((host, port))
    srv.listen(backlog)
    return srv


def answer_forever(srv, reply):
    """Per connection: read one command, send REPLY(cmd) as one line of JSON, close."""
    while True:
        conn, _ = srv.accept()
        with conn:
            cmd = conn.recv(64).decode(errors="replace").strip()
            conn.sendall(json.dumps(reply(cmd)).encode() + b"\n")
