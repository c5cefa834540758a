"""`seamless-upgrade setup`: the range picker on real and made-up memory maps, and what it writes."""

from __future__ import annotations

import os
import struct
import subprocess
from pathlib import Path

import pytest

from seamless_systemd import cli, hugemem, reserve
from seamless_systemd.errors import SeamlessError

G = reserve.GIB
M = reserve.MIB

# A 4 GiB QEMU guest (i440fx): 3 GiB below the PCI hole, 1 GiB above 4 GiB.
GUEST_4G = """\
00000000-00000fff : Reserved
00001000-0009fbff : System RAM
0009fc00-0009ffff : Reserved
000f0000-000fffff : Reserved
  000f0000-000fffff : System ROM
00100000-bffdffff : System RAM
  2a000000-2ac02fff : Kernel code
  2ae00000-2b2fffff : Kernel rodata
  2b400000-2b6e47ff : Kernel data
  2bc5d000-2bffffff : Kernel bss
bffe0000-bfffffff : Reserved
feffc000-feffffff : Reserved
fffc0000-ffffffff : Reserved
100000000-13fffffff : System RAM
"""

# RAM only below 4 GiB (2.5 GiB), the initramfs just below 896 MiB (where GRUB puts it).
LOW_ONLY = """\
00001000-0009fbff : System RAM
00100000-9ffdffff : System RAM
  01000000-01c02fff : Kernel code
  01e00000-022fffff : Kernel data
"""


def boot_params(start: int, size: int, addr_max: int = 0x7FFFFFFF) -> bytes:
    blob = bytearray(4096)
    struct.pack_into("<I", blob, 0x218, start & 0xFFFFFFFF)
    struct.pack_into("<I", blob, 0x21C, size & 0xFFFFFFFF)
    struct.pack_into("<I", blob, 0x22C, addr_max)
    struct.pack_into("<I", blob, 0xC0, start >> 32)
    struct.pack_into("<I", blob, 0xC4, size >> 32)
    return bytes(blob)


def overlaps(a: tuple[int, int], b: tuple[int, int]) -> bool:
    return a[0] < b[1] and b[0] < a[1]


def test_parse_iomem_keeps_nesting() -> None:
    res = hugemem.parse_iomem(GUEST_4G)
    assert hugemem.Resource(0x100000000, 0x140000000, "System RAM", 0) in res
    assert hugemem.Resource(0x2A000000, 0x2AC03000, "Kernel code", 1) in res


def test_boot_params_read_high_and_low_halves() -> None:
    bp = reserve.parse_boot_params(boot_params(0x1_3700_0000, 0x1_0000_2000, 0x37FFFFFF))
    assert bp == reserve.BootParams(0x1_3700_0000, 0x1_0000_2000, 0x37FFFFFF)
    # A loader that leaves initrd_addr_max at 0: the limit x86-64 kernels advertise.
    assert reserve.parse_boot_params(boot_params(0, 0, 0)).initrd_max == reserve.DEFAULT_INITRD_MAX  # type: ignore[union-attr]
    assert reserve.parse_boot_params(b"\0" * 100) is None


def test_above_4g_first_at_the_top() -> None:
    start = reserve.pick(
        hugemem.parse_iomem(GUEST_4G), reserve.parse_boot_params(boot_params(0x36000000, 30 * M)), 512 * M
    )
    assert start == 0x120000000
    assert reserve.word(start, 512 * M) == "memmap=512M!4608M"


def test_the_kernel_and_a_crash_kernel_are_kept_away_from() -> None:
    text = GUEST_4G + "  130000000-137ffffff : Crash kernel\n"
    iomem = hugemem.parse_iomem(text)
    start = reserve.pick(iomem, None, 256 * M)
    crash = (0x130000000, 0x138000000)
    assert not overlaps((start, start + 256 * M), (crash[0] - reserve.GUARD, crash[1] + reserve.GUARD))
    # Above 4 GiB, 4 GiB..4.625 GiB is free of the crash kernel's guard: the top of it.
    assert start == 0x118000000
    # 1 GiB: nowhere above 4 GiB any more, nor between 2 GiB (the initramfs limit) and the
    # PCI hole (896 MiB once aligned); so below 2 GiB, the kernel's guard left out.
    big = reserve.pick(iomem, None, 1 * G)
    assert big == 0x40000000 and big >= 0x2C000000 + reserve.GUARD


def test_low_memory_only_keeps_off_the_initramfs() -> None:
    initrd = (0x35000000, 0x35000000 + 40 * M)
    bp = reserve.parse_boot_params(boot_params(initrd[0], 40 * M))
    iomem = hugemem.parse_iomem(LOW_ONLY)
    start = reserve.pick(iomem, bp, 512 * M)
    assert start % reserve.ALIGN == 0
    # Above the 2 GiB limit is only 0x80000000..0x9ffe0000: 384 MiB once aligned, too small;
    # so below it, kept GUARD away from where the boot loader put the initramfs.
    got = (start, start + 512 * M)
    assert not overlaps(got, (initrd[0] - reserve.GUARD, initrd[1] + reserve.GUARD))
    assert got[1] <= 0x9FFE0000
    assert reserve.pick(iomem, bp, 384 * M) == 0x80000000


def test_too_big_says_how_big_it_can_be() -> None:
    with pytest.raises(SeamlessError, match=r"no free stretch of RAM holds 8G .*is 1152M\): ask for less"):
        reserve.pick(hugemem.parse_iomem(GUEST_4G), None, 8 * G)


@pytest.mark.skipif(os.geteuid() != 0, reason="/proc/iomem shows addresses to root only")
def test_this_machine() -> None:
    iomem = hugemem.parse_iomem(Path("/proc/iomem").read_text())
    bp = reserve.parse_boot_params(Path("/sys/kernel/boot_params/data").read_bytes())
    start = reserve.pick(iomem, bp, 512 * M)
    ram = [(r.start, r.end) for r in iomem if r.depth == 0 and r.name == "System RAM"]
    assert any(s <= start and start + 512 * M <= e for s, e in ram)
    for r in iomem:
        if r.name.startswith("Kernel "):
            assert not overlaps((start, start + 512 * M), (r.start - reserve.GUARD, r.end + reserve.GUARD))


@pytest.fixture
def machine(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A made-up machine booted by GRUB: its files under TMP_PATH, update-grub recorded."""
    for name, rel in (
        ("GRUB_FILE", "etc/default/grub.d/seamless.cfg"),
        ("GRUB_CFG", "boot/grub/grub.cfg"),
        ("KERNEL_CMDLINE", "etc/kernel/cmdline"),
        ("RECORD", "var/lib/seamless/setup.json"),
        ("PROC_CMDLINE", "proc/cmdline"),
        ("IOMEM", "proc/iomem"),
        ("BOOT_PARAMS", "sys/boot_params"),
    ):
        monkeypatch.setattr(reserve, name, tmp_path / rel)
    (tmp_path / "boot/grub").mkdir(parents=True)
    (tmp_path / "boot/grub/grub.cfg").write_text("")
    (tmp_path / "proc").mkdir()
    (tmp_path / "proc/cmdline").write_text("root=/dev/vda1 ro console=ttyS0\n")
    (tmp_path / "proc/iomem").write_text(GUEST_4G)
    (tmp_path / "sys").mkdir()
    (tmp_path / "sys/boot_params").write_bytes(boot_params(0x36000000, 30 * M))
    calls: list[list[str]] = []
    monkeypatch.setattr(reserve, "run", lambda argv, **kw: calls.append(argv))
    monkeypatch.setattr(reserve, "way", lambda: reserve.Way("grub", "here"))
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    # The logger as a test run has it (setup would point it at this test's stderr for good).
    monkeypatch.setattr(cli.log, "setup", lambda debug: None)
    monkeypatch.setattr(reserve, "_calls", calls, raising=False)
    return tmp_path


def test_setup_writes_what_grub_mkconfig_reads(
    machine: Path, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    assert cli.main(["setup", "--size", "512M"]) == 0
    out = capsys.readouterr().out
    assert "memmap=512M!4608M" in out and "Reboot once" in out
    assert reserve._calls == [["update-grub"]]  # type: ignore[attr-defined]
    # grub-mkconfig sources the file with sh after /etc/default/grub.
    got = subprocess.run(
        [
            "sh",
            "-c",
            f'GRUB_CMDLINE_LINUX="console=ttyS0"; . {machine}/etc/default/grub.d/seamless.cfg; '
            'printf %s "$GRUB_CMDLINE_LINUX"',
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert got == "console=ttyS0 memmap=512M!4608M"
    # Twice: refused, naming what is there.
    assert cli.main(["setup", "--size", "1G"]) == 1
    assert "already set up: memmap=512M!4608M (from the next boot on)" in caplog.text
    assert cli.main(["setup", "--remove"]) == 0
    assert not (machine / "etc/default/grub.d/seamless.cfg").exists()
    assert reserve._calls == [["update-grub"], ["update-grub"]]  # type: ignore[attr-defined]
    assert cli.main(["setup", "--remove"]) == 0
    assert "Nothing to remove" in capsys.readouterr().out


def test_setup_refuses_a_machine_with_a_reservation_of_its_own(
    machine: Path, caplog: pytest.LogCaptureFixture
) -> None:
    (machine / "proc/cmdline").write_text("root=/dev/vda ro memmap=512M!1536M\n")
    assert cli.main(["setup", "--size", "512M"]) == 1
    err = caplog.text
    assert "already reserves memmap=512M!1536M" in err and "serves the upgrade as it is" in err
    assert not (machine / "etc/default/grub.d").exists()


def test_our_own_ram_on_demand_words_are_no_reservation(
    machine: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A boot after a RAM-on-demand upgrade names its ranges after seamless.ram=: they were given back."""
    words = "root=/dev/vda1 ro seamless.ram=on-demand memmap=6M!0x1a400000,2M!0x1b000000"
    assert reserve.existing(words) == []
    assert reserve.existing(words + " memmap=512M!1536M") == ["memmap=512M!1536M"]
    (machine / "proc/cmdline").write_text(words + "\n")
    assert cli.main(["setup", "--size", "512M", "--dry-run"]) == 0
    assert "memmap=512M!4608M" in capsys.readouterr().out


def test_setup_dry_run_writes_nothing(machine: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["setup", "--size", "300M", "--dry-run"]) == 0
    assert "memmap=384M!4736M" in capsys.readouterr().out
    assert not (machine / "etc/default/grub.d").exists() and reserve._calls == []  # type: ignore[attr-defined]


def test_setup_bad_size(machine: Path, caplog: pytest.LogCaptureFixture) -> None:
    assert cli.main(["setup", "--size", "lots"]) == 1
    assert "give a size such as 512M" in caplog.text


def test_way_names_what_it_found(tmp_path: Path) -> None:
    with pytest.raises(SeamlessError, match="not kept in a way 'setup' knows"):
        reserve.way(tmp_path)
    (tmp_path / "etc/kernel").mkdir(parents=True)
    (tmp_path / "etc/kernel/cmdline").write_text("root=/dev/sda1\n")
    assert reserve.way(tmp_path).name == "kernel-cmdline"
