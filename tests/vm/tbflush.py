"""Empty QEMU's translation buffer early in a kexec'd boot, through QEMU's gdb stub.

An experiment of the test bed, measured and left off (SEAMLESS_QEMU_TBFLUSH=
shutdown, kexec or clocksource turns it on, see WHEN; docs/platform.md,
"Kexec'd boots under TCG"). QEMU 7.2 keeps every guest page it has translated
code from on its slow write path until that code is invalidated or the whole
translation buffer is flushed, and a store that misses the translated bytes
invalidates nothing. After a kexec the new kernel reuses the old system's code
pages for everything, and each store to them takes the slow path until the
buffer fills up (1 GiB by default: a minute or more). Real CPUs have no such
thing. QEMU 7.2 flushes the whole buffer when the guest stops for its debugger
(gdbstub.c, gdb_vm_state_change: tb_flush on RUN_STATE_DEBUG), so the harness,
at the kexec, connects to the gdb stub (which pauses the guest), single-steps
one instruction (the stop flushes) and detaches (which resumes the guest): a
pause of some milliseconds.
"""

from __future__ import annotations

import socket
import time
from pathlib import Path

# The old kernel's last line before it jumps into the new one (kernel/kexec_core.c).
KEXEC_LINE = "kexec_core: Starting new kernel"
# What the guest's system-shutdown program says (tests/vm/guest/kexec-pause) before it waits a
# moment for the flush, the old system stopped and the kexec next.
SHUTDOWN_LINE = "seamless-test: kexec next"
# SEAMLESS_QEMU_TBFLUSH's values: the console line after which the harness flushes.
# - shutdown: just before the kexec (the guest waits for it; the image must be built with the
#   same setting, which installs the waiting program).
# - kexec: at the old kernel's last line. Polled every 50 ms, the flush may land in the new
#   kernel's first steps: once (polled every 0.5 s) a soft lockup followed in that boot.
# - clocksource: once the new kernel has switched its clocksource (past the calibration and the
#   secondary CPUs' start): most of the gain is gone, the slow stores come before it.
# (docs/platform.md, "Kexec'd boots under TCG").
WHEN = {"shutdown": SHUTDOWN_LINE, "kexec": KEXEC_LINE, "clocksource": "clocksource: Switched to clocksource"}


def _packet(body: str) -> bytes:
    return f"${body}#{sum(body.encode()) % 256:02x}".encode()


def _reply(sock: socket.socket, buf: bytearray, deadline: float) -> str:
    """The body of the next '$BODY#CS' packet from the stub (acks and other bytes skipped)."""
    while True:
        start = buf.find(b"$")
        end = buf.find(b"#", start + 1) if start >= 0 else -1
        if start >= 0 and end >= 0 and len(buf) >= end + 3:
            body = bytes(buf[start + 1 : end]).decode(errors="replace")
            del buf[: end + 3]
            sock.sendall(b"+")
            return body
        sock.settimeout(max(0.1, deadline - time.monotonic()))
        chunk = sock.recv(4096)
        if not chunk:
            raise ConnectionError("QEMU's gdb stub closed the connection")
        buf += chunk


def flush(path: Path, timeout: float = 10.0) -> float:
    """Make QEMU at gdb socket PATH drop all translated code; returns the seconds the guest was paused."""
    deadline = time.monotonic() + timeout
    buf = bytearray()
    t0 = time.monotonic()
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        sock.connect(str(path))
        try:
            # Connecting pauses the guest; the stub says so (a stop reply 'T02') once it has, and
            # only then may the step be asked for (before, the pause would come after it).
            while not _reply(sock, buf, deadline).startswith("T"):
                pass
            # One instruction of CPU 0, which runs the new kernel's start (kexec moves to the boot
            # CPU); the stop after it flushes.
            sock.sendall(_packet("s"))
            while not (answer := _reply(sock, buf, deadline)).startswith("T05"):
                if not answer.startswith("T"):
                    raise RuntimeError(f"QEMU's gdb stub answered {answer!r} to a single step")
        finally:
            # Detaching resumes the guest, whatever happened before.
            sock.sendall(_packet("D"))
            while (answer := _reply(sock, buf, deadline)).startswith("T"):
                pass
    return time.monotonic() - t0
