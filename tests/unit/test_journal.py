"""The journal entries: journald's native format on a real socket, and the catalog that explains them."""

from __future__ import annotations

import re
import shutil
import socket
import struct
import subprocess
from pathlib import Path

import pytest

from seamless_systemd import journal, report

CATALOG = Path(__file__).resolve().parents[2] / "packaging" / "files" / "seamless-systemd.catalog"


def parse(datagram: bytes) -> dict[str, str]:
    """journald's side of the native protocol (systemd's journald-native.c, in short)."""
    fields: dict[str, str] = {}
    rest = datagram
    while rest:
        line, sep, after = rest.partition(b"\n")
        assert sep, f"unterminated field {line!r}"
        if b"=" in line:
            key, _, value = line.partition(b"=")
            rest = after
        else:
            key = line
            (size,) = struct.unpack("<Q", after[:8])
            value = after[8 : 8 + size]
            assert after[8 + size : 9 + size] == b"\n"
            rest = after[9 + size :]
        assert re.fullmatch(rb"[A-Z0-9][A-Z0-9_]*", key), key
        fields[key.decode()] = value.decode()
    return fields


@pytest.fixture
def journald(tmp_path: Path) -> tuple[Path, socket.socket]:
    path = tmp_path / "socket"
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.bind(str(path))
    s.settimeout(2)
    return path, s


def test_an_event_is_one_entry_with_its_fields(journald: tuple[Path, socket.socket]) -> None:
    path, s = journald
    journal.event(
        journal.UNIT_OUTCOME,
        "db.service cold-started after upgrade G: images damaged:\nchecksum mismatch",
        journal.WARNING,
        unit="db.service",
        path=path,
        generation="G",
        outcome="cold-started",
        main_pid_after=None,
        restore_sec=1.23456,
        kept=True,
    )
    got = parse(s.recv(65536))
    assert got == {
        "SYSLOG_IDENTIFIER": "seamless-upgrade",
        "MESSAGE": "db.service cold-started after upgrade G: images damaged:\nchecksum mismatch",
        "MESSAGE_ID": journal.UNIT_OUTCOME,
        "PRIORITY": "4",
        "UNIT": "db.service",
        "OBJECT_SYSTEMD_UNIT": "db.service",
        "SEAMLESS_GENERATION": "G",
        "SEAMLESS_OUTCOME": "cold-started",
        "SEAMLESS_RESTORE_SEC": "1.235",
        "SEAMLESS_KEPT": "yes",
    }


def test_no_journal_is_no_failure(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without journald (a chroot, a container) the event is still said on stderr."""
    caplog.set_level("INFO", logger="seamless")
    monkeypatch.setattr(journal.log, "propagate", True)
    journal.event(journal.ARMED, "Armed upgrade G", path=tmp_path / "none")
    assert "Armed upgrade G" in caplog.text


def test_bad_field_names_are_refused() -> None:
    with pytest.raises(ValueError):
        journal.encode({"_PID": 1})
    with pytest.raises(ValueError):
        journal.encode({"A B": 1})


def test_an_upgrade_report_gives_one_entry_and_one_per_unit(
    journald: tuple[Path, socket.socket], monkeypatch: pytest.MonkeyPatch
) -> None:
    path, s = journald
    monkeypatch.setattr(journal, "SOCKET", path)
    rep = {
        "generation": "G",
        "kernel": {"from": "6.1.0-47", "to": "6.1.0-53"},
        "units": [
            {"unit": "a.service", "outcome": "restored", "main_pid_before": 5, "main_pid_after": 5,
             "seconds": {"restore": 0.5, "downtime": None}},
            {"unit": "b.service", "outcome": "cold-started", "reason": "images damaged", "seconds": {}},
        ],
        "seconds": {"checkpoint": 1.0, "downtime": 30.25},
    }  # fmt: skip
    report.announce(rep)
    whole, a, b = (parse(s.recv(65536)) for _ in range(3))
    assert whole["MESSAGE_ID"] == journal.UPGRADE and whole["SEAMLESS_OUTCOME"] == "finished"
    assert whole["MESSAGE"] == "Upgrade G (6.1.0-47 -> 6.1.0-53) finished: 1 of 2 unit(s) restored"
    assert (whole["SEAMLESS_UNITS_RESTORED"], whole["SEAMLESS_DOWNTIME_SEC"]) == ("1", "30.250")
    assert a["UNIT"] == "a.service" and a["SEAMLESS_RESTORE_SEC"] == "0.500" and a["PRIORITY"] == "6"
    assert "SEAMLESS_DOWNTIME_SEC" not in a
    assert b["SEAMLESS_REASON"] == "images damaged" and b["PRIORITY"] == "4"


def test_every_message_id_is_in_the_catalog() -> None:
    ids = {v for k, v in vars(journal).items() if k.isupper() and isinstance(v, str) and len(v) == 32}
    assert len(ids) == 9
    text = CATALOG.read_text()
    assert set(re.findall(r"^-- ([0-9a-f]{32})$", text, re.M)) == ids


@pytest.mark.skipif(shutil.which("journalctl") is None, reason="needs journalctl")
def test_journalctl_reads_the_catalog(tmp_path: Path) -> None:
    """journalctl itself builds its database from the file and lists each entry's subject."""
    where = tmp_path / "usr/lib/systemd/catalog"
    where.mkdir(parents=True)
    (tmp_path / "var/lib/systemd/catalog").mkdir(parents=True)
    shutil.copy(CATALOG, where)
    subprocess.run(["journalctl", f"--root={tmp_path}", "--update-catalog"], check=True)
    listed = subprocess.run(
        ["journalctl", f"--root={tmp_path}", "--list-catalog"], check=True, capture_output=True, text=True
    ).stdout
    assert (
        f"{journal.UPGRADE} seamless-systemd: Kernel upgrade @SEAMLESS_GENERATION@: @SEAMLESS_OUTCOME@"
        in listed
    )
    assert len(listed.splitlines()) == 9
