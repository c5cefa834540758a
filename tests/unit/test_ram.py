"""RAM on demand: the sizes, limits and host facts the plan judges by (seamless_systemd.ram)."""

from pathlib import Path

import pytest

from seamless_systemd import hugemem, procs, ram

MiB = 1 << 20


def test_needed_bytes_has_room_and_whole_pages() -> None:
    assert ram.needed_bytes(0) == 32 * MiB
    assert ram.needed_bytes(100 * MiB + 1) == 158 * MiB  # 125 MiB + 32 MiB, rounded up to 2 MiB
    assert ram.needed_bytes(10 * MiB, minimum=300 * MiB) == 300 * MiB
    assert ram.needed_bytes(10 * MiB, minimum=301 * MiB) == 302 * MiB


def test_max_ranges_counts_what_the_command_line_still_holds() -> None:
    short = ram.max_ranges("root=/dev/vda")
    assert 120 <= short <= 128
    # Each range needs at most BYTES_PER_RANGE: that many always fit.
    line = "root=/dev/vda seamless.ram=on-demand memmap=" + ",".join(["2M!0x12f400000"] * short)
    assert len(line) < hugemem.COMMAND_LINE_MAX
    assert ram.max_ranges("x" * 2040) == 0


def test_lockdown_and_meminfo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    lock = tmp_path / "lockdown"
    lock.write_text("none [integrity] confidentiality\n")
    assert ram.lockdown(lock) == "integrity"
    lock.write_text("[none] integrity confidentiality\n")
    assert ram.lockdown(lock) == "none"
    assert ram.lockdown(tmp_path / "missing") == "none"
    # The figures plan and give_back go by (procs.meminfo).
    (tmp_path / "meminfo").write_text(
        "MemTotal:        2512480 kB\nMemFree:  100 kB\nMemAvailable:    2141404 kB\n"
    )
    monkeypatch.setattr(procs, "PROC", tmp_path)
    assert procs.meminfo("MemTotal") == 2512480 << 10
    assert procs.meminfo("MemAvailable") == 2141404 << 10
