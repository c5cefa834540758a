"""RAM on demand, first part: hugetlb pages taken, their physical ranges, memmap= for the new kernel."""

from __future__ import annotations

import mmap
import os
from pathlib import Path

import pytest

from seamless_systemd import hugemem
from seamless_systemd.hugemem import Range

MIB = 1 << 20


def test_pages_merge_into_ranges_in_physical_order() -> None:
    # As the kernel hands them out: descending, with a gap.
    pairs = [(0x7C00000, 2 * MIB), (0x7A00000, 2 * MIB), (0x7800000, 2 * MIB), (0x4000000, 2 * MIB)]
    assert hugemem.merge(pairs) == [Range(0x4000000, 2 * MIB), Range(0x7800000, 6 * MIB)]


def test_memmap_names_each_range_and_the_command_line_limit_holds() -> None:
    ranges = [Range(0x4000000, 2 * MIB), Range(0x40000000, 1 << 30), Range(0x7800000, 6 * MIB)]
    assert hugemem.memmap_arg(ranges) == "memmap=2M!0x4000000,1G!0x40000000,6M!0x7800000"
    cmdline = "root=/dev/vda rw console=ttyS0 panic=-1"
    assert hugemem.fits(cmdline, ranges)
    many = [Range(0x100000000 + i * 4 * MIB, 2 * MIB) for i in range(200)]
    assert not hugemem.fits(cmdline, many)  # about 14 bytes a range: 200 do not fit in 2048


def test_free_blocks_counts_what_the_buddy_lists_hold(tmp_path: Path) -> None:
    info = tmp_path / "buddyinfo"
    # orders 0..10 of 4 KiB pages; 2 MiB is order 9
    info.write_text(
        "Node 0, zone      DMA      0      0      0      0      0      0      0      0      1      1      3\n"
        "Node 0, zone   Normal   5139   5539   3170   2004   1834   1281    916    547    474      2    581\n"
    )
    assert hugemem.free_blocks(2 * MIB, info) == (1 + 3 * 2) + (2 + 581 * 2)


@pytest.mark.skipif(
    os.geteuid() != 0 or 2 * MIB not in hugemem.page_sizes(), reason="needs root and 2 MiB pages"
)
def test_take_and_give_back_real_hugepages(tmp_path: Path) -> None:
    nr = hugemem._nr_path(2 * MIB)
    before = int(nr.read_text())
    with hugemem.hugetlbfs(tmp_path / "huge", 2 * MIB) as d:
        taken = hugemem.take(d, 7 * MIB, 2 * MIB)  # rounded up to 4 pages
        try:
            assert taken.size == 8 * MIB and len(set(taken.addresses)) == 4
            assert all(a % (2 * MIB) == 0 and a > 0 for a in taken.addresses)
            assert sum(r.length for r in taken.ranges) == 8 * MIB
            order = taken.layout()
            assert [taken.addresses[i] for i in order] == sorted(taken.addresses)
            assert int(nr.read_text()) == before + 4
            ram = _system_ram()
            assert all(any(s <= r.start and r.end - 1 <= e for s, e in ram) for r in taken.ranges)
        finally:
            hugemem.give_back(taken)
        assert not taken.path.exists()
    assert int(nr.read_text()) == before


def test_choose_keeps_whole_blocks_first() -> None:
    block = 8 * MIB  # four 2 MiB pages per block, to keep the example small
    addresses = [
        0x0200000,  # block 0: one page
        0x0800000,  # block 1: all four pages, out of order
        0x0E00000,
        0x0A00000,
        0x0C00000,
        0x1000000,  # block 2: two pages
        0x1200000,
    ]
    assert hugemem.choose(addresses, 4, block) == [1, 2, 3, 4]
    # Then the fullest block, lowest pages first.
    assert hugemem.choose(addresses, 5, block) == [1, 2, 3, 4, 5]
    assert hugemem.choose(addresses, 7, block) == list(range(7))
    # With a lead page: the page just below a range that starts on a block
    # boundary comes too (block 0's page at 0x600000 sits below block 1).
    addresses.append(0x0600000)
    assert hugemem.choose(addresses, 4, block, lead=2 * MIB) == [1, 2, 3, 4, 7]
    # Of two full blocks, the one with a page just below it goes first.
    two = [0x0800000, 0x0A00000, 0x0C00000, 0x0E00000, 0x1800000, 0x1A00000, 0x1C00000, 0x1E00000, 0x1600000]
    assert hugemem.choose(two, 4, block) == [0, 1, 2, 3]
    assert hugemem.choose(two, 4, block, lead=2 * MIB) == [4, 5, 6, 7, 8]


@pytest.mark.skipif(
    os.geteuid() != 0 or 2 * MIB not in hugemem.page_sizes(), reason="needs root and 2 MiB pages"
)
def test_take_with_spare_keeps_only_what_was_asked(tmp_path: Path) -> None:
    nr = hugemem._nr_path(2 * MIB)
    before = int(nr.read_text())
    with hugemem.hugetlbfs(tmp_path / "huge", 2 * MIB) as d:
        taken = hugemem.take(d, 8 * MIB, 2 * MIB, spare=8 * MIB, block=8 * MIB)
        try:
            assert taken.size == 8 * MIB and len(taken.indices) == 4
            # The pages not chosen were freed: the pool grew by what is kept only.
            assert int(nr.read_text()) == before + 4
            fd = os.open(taken.path, os.O_RDWR)
            try:
                flags = mmap.MAP_SHARED | hugemem.MAP_NORESERVE
                with mmap.mmap(fd, taken.file_size, flags) as m:
                    for n, i in enumerate(taken.layout()):
                        m[i * 2 * MIB] = n + 1
                    got = [m[i * 2 * MIB] for i in taken.layout()]
            finally:
                os.close(fd)
            assert got == [1, 2, 3, 4]
        finally:
            hugemem.give_back(taken)
    assert int(nr.read_text()) == before


def _system_ram() -> list[tuple[int, int]]:
    out = []
    for line in Path("/proc/iomem").read_text().splitlines():
        if line.strip().endswith(": System RAM") and not line.startswith(" "):
            lo, hi = line.split(":")[0].strip().split("-")
            out.append((int(lo, 16), int(hi, 16)))
    return out


def test_taking_more_than_there_is_gives_everything_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The kernel grants fewer pages than asked: the error says how much, nr_hugepages is as before."""
    sysfs = tmp_path / "hugepages/hugepages-2048kB"
    sysfs.mkdir(parents=True)
    nr = sysfs / "nr_hugepages"
    nr.write_text("0\n")
    monkeypatch.setattr(hugemem, "HUGEPAGES", tmp_path / "hugepages")
    real_write = Path.write_text

    def capped(self: Path, data: str, *a: object, **k: object) -> int:
        if self == nr:
            data = f"{min(int(data), 3)}\n"  # only 3 pages to be had
        return real_write(self, data)

    monkeypatch.setattr(Path, "write_text", capped)
    with pytest.raises(hugemem.RamError, match="only 3 of 10 hugepages of 2 MiB"):
        hugemem.take(tmp_path, 20 * MIB, 2 * MIB)
    assert nr.read_text() == "0\n"


IOMEM = """\
00000000-00000fff : Reserved
00001000-0009fbff : System RAM
00100000-9ffdcfff : System RAM
  01000000-01e00000 : Kernel code
9ffdd000-9fffffff : Reserved
"""


def test_kexec_window_is_the_largest_stretch_of_ram_free_of_the_ranges() -> None:
    ram = hugemem.system_ram(IOMEM)
    assert ram == [Range(0x1000, 0x9EC00), Range(0x100000, 0x9FEDD000)]
    ranges = [Range(0x8C00000, 2 * MIB), Range(0xFE00000, 88 * MIB), Range(0x16E00000, 8 * MIB)]
    window = hugemem.kexec_window(ranges, ram)
    assert window == Range(0x17600000, 0x9FFDD000 - 0x17600000)
    assert all(r.end <= window.start or r.start >= window.end for r in ranges)
    with pytest.raises(hugemem.RamError, match="no RAM is left"):
        hugemem.kexec_window([Range(0, 0xA0000000)], ram)


def test_dm_table_lays_the_pmem_devices_end_to_end_in_physical_order() -> None:
    ranges = [Range(0xFE00000, 88 * MIB), Range(0x8C00000, 2 * MIB)]
    devices = {0x8C00000: "/dev/pmem3", 0xFE00000: "/dev/pmem1", 0x60000000: "/dev/pmem0"}
    assert hugemem.dm_table(ranges, devices) == (
        "0 4096 linear /dev/pmem3 0\n4096 180224 linear /dev/pmem1 0\n"
    )
    with pytest.raises(hugemem.RamError, match="no pmem device at 0xb000000"):
        hugemem.dm_table([Range(0xB000000, 2 * MIB)], devices)
