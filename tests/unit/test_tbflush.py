"""The test bed's flush of QEMU's translated code at a kexec (tests/vm/tbflush.py), against a stub.

The stub speaks what QEMU 7.2's gdb stub does in the exchange: a stop reply
('T02') once the connection has paused the guest, a '+' for each packet, a
'T05' after one single step, 'OK' to the detach. The real stub is exercised
by every kexec of the VM tests ("QEMU's translated code dropped").
"""

from __future__ import annotations

import socket
import threading
from pathlib import Path

import pytest

from tests.vm import tbflush


def _stub(path: Path, step_answer: str, got: list[str]) -> threading.Thread:
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(path))
    server.listen(1)

    def send(conn: socket.socket, body: str) -> None:
        conn.sendall(b"+" + tbflush._packet(body))

    def serve() -> None:
        conn, _ = server.accept()
        with conn, server:
            conn.sendall(tbflush._packet("T02thread:01;"))
            buf = b""
            while True:
                chunk = conn.recv(4096)
                if not chunk:
                    return
                buf += chunk
                while b"#" in buf and b"$" in buf:
                    start = buf.index(b"$")
                    end = buf.index(b"#", start)
                    if len(buf) < end + 3:
                        break
                    body = buf[start + 1 : end].decode()
                    assert buf[end + 1 : end + 3].decode() == f"{sum(body.encode()) % 256:02x}"
                    buf = buf[end + 3 :]
                    got.append(body)
                    if body == "s":
                        send(conn, step_answer)
                    elif body == "D":
                        send(conn, "OK")  # and the client closes the connection

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    return thread


def test_one_step_then_detach(tmp_path: Path) -> None:
    got: list[str] = []
    stub = _stub(tmp_path / "gdb", "T05thread:01;", got)
    paused = tbflush.flush(tmp_path / "gdb")
    stub.join(5)
    assert got == ["s", "D"]
    assert 0 <= paused < 5


def test_a_refused_step_still_resumes_the_guest(tmp_path: Path) -> None:
    got: list[str] = []
    stub = _stub(tmp_path / "gdb", "E22", got)
    with pytest.raises(RuntimeError, match="E22"):
        tbflush.flush(tmp_path / "gdb")
    stub.join(5)
    assert got == ["s", "D"]
