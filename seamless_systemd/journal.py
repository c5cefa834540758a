"""Structured journal entries: each phase of an upgrade and each unit's outcome.

Every entry carries a MESSAGE_ID that the package's catalog explains
(`journalctl -x`), so that `journalctl MESSAGE_ID=<UPGRADE>` lists every
upgrade the machine went through, and fields a script can read:
SEAMLESS_GENERATION=, SEAMLESS_OUTCOME=, SEAMLESS_REASON=, the phases'
durations as SEAMLESS_<PHASE>_SEC=. An entry about a unit names it in UNIT=
and OBJECT_SYSTEMD_UNIT=, so `journalctl -u UNIT` shows it beside the
unit's own lines (journalctl trusts OBJECT_SYSTEMD_UNIT= from root).

The entries go to journald's native socket. When our stderr is the journal
already (a service: $JOURNAL_STREAM names it), the message is written once,
as the structured entry; on a terminal it is also printed.
"""

from __future__ import annotations

import logging
import os
import socket
import struct
from collections.abc import Mapping
from pathlib import Path

from seamless_systemd.log import log

SOCKET = Path("/run/systemd/journal/socket")
IDENTIFIER = "seamless-upgrade"

# The MESSAGE_IDs (made once with uuid4); packaging/files/seamless-systemd.catalog explains each.
ARMED = "683c064bb5b145f6bd61064682689971"
REFUSED = "389955fbbea8487193ec89fd3103730a"
KEXEC = "f6f78c25aac84922a43f550acce46b37"
CHECKPOINT = "de9ee2ec46ba4fd8a017f144598cea1d"
UNIT_OUTCOME = "a5a76dc0d76243398dfc99c1dd8c437c"
UPGRADE = "47cb0d0d14864146bb53c6d226ff09ac"
DISARMED = "5e26a8f9ae2e4964854053b772004acf"
FALLBACK = "db7b8a1d28c745599be600851c2385cb"
KERNEL = "05defc96761d4907b8867c1842f048db"

# syslog priorities (sd-journal's PRIORITY=).
ERR, WARNING, NOTICE, INFO = 3, 4, 5, 6
_LOGGING = {ERR: logging.ERROR, WARNING: logging.WARNING, NOTICE: logging.INFO, INFO: logging.INFO}

Value = str | int | float | bool | None


def _field_name(key: str) -> str:
    name = key.upper()
    if not name or name[0] in "_0123456789" or not all(c.isalnum() or c == "_" for c in name):
        raise ValueError(f"not a journal field name: {key!r}")
    return name


def _text(value: Value) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.3f}"
    return str(value)


def encode(fields: Mapping[str, Value]) -> bytes:
    """journald's native format: KEY=VALUE lines; a value with a newline goes as KEY, length, bytes.

    Fields whose value is None are left out.
    """
    out = bytearray()
    for key, value in fields.items():
        if value is None:
            continue
        name = _field_name(key).encode()
        data = _text(value).encode()
        if b"\n" in data:
            out += name + b"\n" + struct.pack("<Q", len(data)) + data + b"\n"
        else:
            out += name + b"=" + data + b"\n"
    return bytes(out)


def stderr_is_journal() -> bool:
    """True if fd 2 is the journal stream systemd gave this service ($JOURNAL_STREAM=DEV:INODE)."""
    dev_ino = os.environ.get("JOURNAL_STREAM", "")
    try:
        dev, ino = (int(x) for x in dev_ino.split(":"))
        st = os.fstat(2)
    except (ValueError, OSError):
        return False
    return (st.st_dev, st.st_ino) == (dev, ino)


def send(fields: Mapping[str, Value], path: Path | None = None) -> bool:
    """Send one entry (FIELDS, MESSAGE= among them) to PATH (SOCKET); False if no journal took it."""
    payload = encode({"SYSLOG_IDENTIFIER": IDENTIFIER, **fields})
    path = SOCKET if path is None else path
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
            s.sendto(payload, str(path))
    except OSError as e:
        log.debug("No journal entry (%s): %s", path, e)
        return False
    return True


def event(
    message_id: str,
    message: str,
    priority: int = INFO,
    unit: str | None = None,
    echo: bool = True,
    path: Path | None = None,
    extra: Mapping[str, Value] | None = None,
    **fields: Value,
) -> None:
    """One upgrade event: a structured entry, and the MESSAGE on stderr unless stderr is the journal.

    FIELDS and EXTRA (names made at run time, e.g. seconds()) become SEAMLESS_<NAME>=.
    ECHO=False: the caller says it in its own words (an error the CLI prints).
    """
    entry: dict[str, Value] = {
        "MESSAGE": message,
        "MESSAGE_ID": message_id,
        "PRIORITY": priority,
        "UNIT": unit,
        "OBJECT_SYSTEMD_UNIT": unit,
    }
    entry.update({f"SEAMLESS_{k}": v for k, v in {**fields, **(extra or {})}.items()})
    sent = send(entry, path)
    if echo and not (sent and stderr_is_journal()):
        log.log(_LOGGING.get(priority, logging.INFO), "%s", message)


def seconds(phases: Mapping[str, float | None]) -> dict[str, Value]:
    """Phase durations as fields: {'checkpoint': 1.5} -> {'CHECKPOINT_SEC': 1.5}."""
    return {f"{k.upper()}_SEC": v for k, v in phases.items()}
