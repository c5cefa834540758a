"""RAM taken at upgrade time: hugetlb pages, their physical ranges, memmap= for the new kernel.

The first part of RAM on demand (docs/ram-on-demand.md): take the RAM the
images need as hugetlb pages of a file on a private hugetlbfs mount, find
where the pages are in physical memory (/proc/self/pagemap, root only),
merge them into ranges, and name those ranges with ``memmap=LEN!ADDR`` on the
new kernel's command line only. Giving them back is removing the file and
lowering ``nr_hugepages`` again.

The file's pages are in no particular physical order; the logical device the
images go on lays them out in ascending physical order (``Taken.layout``), the
order in which the new kernel's /dev/pmemN devices sort by base address.
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import mmap
import os
import re
import struct
from collections.abc import Iterator
from pathlib import Path

from seamless_systemd.errors import SeamlessError

HUGEPAGES = Path("/sys/kernel/mm/hugepages")
PAGEMAP_PFN = (1 << 55) - 1  # bits 0-54 of a /proc/PID/pagemap entry
PAGEMAP_PRESENT = 1 << 63
COMMAND_LINE_MAX = 2048  # x86's COMMAND_LINE_SIZE


class RamError(SeamlessError):
    """The RAM for the images cannot be taken now (what is wrong and what to do)."""


@dataclasses.dataclass(frozen=True)
class Range:
    """Physical memory: START and LENGTH in bytes."""

    start: int
    length: int

    @property
    def end(self) -> int:
        return self.start + self.length

    def memmap(self) -> str:
        return f"{_size(self.length)}!{self.start:#x}"


def _size(n: int) -> str:
    for unit, shift in (("G", 30), ("M", 20), ("K", 10)):
        if n % (1 << shift) == 0:
            return f"{n >> shift}{unit}"
    return str(n)


def page_sizes() -> list[int]:
    """The hugetlb page sizes this kernel and CPU offer, in bytes, largest first."""
    try:
        names = [p.name for p in HUGEPAGES.iterdir()]
    except OSError:
        return []
    return sorted((int(n.removeprefix("hugepages-").removesuffix("kB")) << 10 for n in names), reverse=True)


def _nr_path(page: int) -> Path:
    return HUGEPAGES / f"hugepages-{page >> 10}kB" / "nr_hugepages"


def free_blocks(page: int, buddyinfo: Path = Path("/proc/buddyinfo")) -> int:
    """Free blocks of PAGE bytes or more, counted in PAGE units, from the buddy allocator's lists.

    What the kernel can hand out as hugepages at once without compaction.
    """
    order = (page // os.sysconf("SC_PAGE_SIZE")).bit_length() - 1
    blocks = 0
    for line in buddyinfo.read_text().splitlines():
        counts = [int(x) for x in line.split()[4:]]
        for o, n in enumerate(counts):
            if o >= order:
                blocks += n << (o - order)
    return blocks


def merge(pairs: list[tuple[int, int]]) -> list[Range]:
    """(physical address, length) of pages -> ranges, contiguous pages merged, lowest first."""
    out: list[Range] = []
    for start, length in sorted(pairs):
        if out and out[-1].end == start:
            out[-1] = Range(out[-1].start, out[-1].length + length)
        else:
            out.append(Range(start, length))
    return out


def memmap_arg(ranges: list[Range]) -> str:
    """One memmap= parameter naming every range (the comma-list form)."""
    return "memmap=" + ",".join(r.memmap() for r in ranges)


def fits(cmdline: str, ranges: list[Range]) -> bool:
    """Whether CMDLINE plus the memmap= of RANGES fits the kernel's command line."""
    return len(f"{cmdline} {memmap_arg(ranges)}".strip()) < COMMAND_LINE_MAX


@dataclasses.dataclass(frozen=True)
class Resource:
    start: int
    end: int  # exclusive
    name: str
    depth: int


def parse_iomem(text: str) -> list[Resource]:
    """/proc/iomem's lines; DEPTH is the nesting (two spaces a level)."""
    out = []
    for line in text.splitlines():
        m = re.match(r"^( *)([0-9a-f]+)-([0-9a-f]+) : (.*)$", line)
        if m:
            out.append(
                Resource(
                    int(m.group(2), 16), int(m.group(3), 16) + 1, m.group(4).strip(), len(m.group(1)) // 2
                )
            )
    return out


def system_ram(iomem: str) -> list[Range]:
    """The top-level "System RAM" ranges of /proc/iomem (read as root: others see zeros)."""
    return [
        Range(r.start, r.end - r.start) for r in parse_iomem(iomem) if r.depth == 0 and r.name == "System RAM"
    ]


def kexec_window(ranges: list[Range], ram: list[Range]) -> Range:
    """The largest stretch of RAM that touches none of RANGES: where kexec -l may put its segments.

    kexec copies the new kernel, its initrd and purgatory to their places at
    `kexec -e`; `--mem-min`/`--mem-max` keep them in this window, off the pages
    that hold the images.
    """
    holes = []
    for area in ram:
        cut = area.start
        for r in sorted(ranges, key=lambda r: r.start):
            if r.end <= area.start or r.start >= area.end:
                continue
            if r.start > cut:
                holes.append(Range(cut, r.start - cut))
            cut = max(cut, r.end)
        if area.end > cut:
            holes.append(Range(cut, area.end - cut))
    if not holes:
        raise RamError("no RAM is left outside the images' ranges for kexec to load the new kernel into")
    return max(holes, key=lambda h: h.length)


def dm_table(ranges: list[Range], devices: dict[int, str]) -> str:
    """The device-mapper linear table that lays RANGES end to end, from the pmem devices at their bases.

    DEVICES: base address -> block device (the new kernel's /dev/pmemN, from
    /sys/block/pmemN/device/resource). The ranges go in ascending physical
    order, as the old kernel's NBD device laid them out.
    """
    lines, sector = [], 0
    for r in sorted(ranges, key=lambda r: r.start):
        dev = devices.get(r.start)
        if dev is None:
            raise RamError(f"no pmem device at {r.start:#x}: the range did not come through the kexec")
        lines.append(f"{sector} {r.length // 512} linear {dev} 0")
        sector += r.length // 512
    return "\n".join(lines) + "\n"


@dataclasses.dataclass
class Taken:
    """Hugetlb pages held in a file: its path, page size, and where each page is in RAM."""

    path: Path
    page: int
    addresses: list[int]  # physical address of each page held
    # File page index of each page held (default 0, 1, ...): the pages not
    # chosen from a larger take are holes in the file.
    indices: list[int] = dataclasses.field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.indices:
            self.indices = list(range(len(self.addresses)))

    @property
    def size(self) -> int:
        return self.page * len(self.addresses)

    @property
    def file_size(self) -> int:
        """What a mapping of the whole file spans (holes included)."""
        return self.page * (max(self.indices) + 1 if self.indices else 0)

    @property
    def ranges(self) -> list[Range]:
        return merge([(a, self.page) for a in self.addresses])

    def layout(self) -> list[int]:
        """File page index of each logical page: the pages in ascending physical order."""
        return [i for _, i in sorted(zip(self.addresses, self.indices, strict=True))]


MEMORY_BLOCK = 128 << 20  # x86's memory block: the unit the new kernel can get back


def choose(addresses: list[int], count: int, block: int = MEMORY_BLOCK, lead: int = 0) -> list[int]:
    """Which COUNT of the pages at ADDRESSES to keep (their indices, ascending).

    Whole BLOCK-aligned blocks first (the new kernel can give back only whole
    memory blocks, and they merge into few ranges), then the fullest blocks.
    With LEAD (a page size), each range that starts on a block boundary also
    gets the page just below it when there is one: the devdax info block
    goes there in the new kernel, so the range's first block can come back
    too. Those pages come on top of COUNT.
    """
    groups: dict[int, list[int]] = {}
    for i, a in enumerate(addresses):
        groups.setdefault(a // block, []).append(i)
    present = set(addresses)

    def led(b: int) -> bool:
        """Whether the page just below block B is among the pages: then B can come back whole."""
        return not lead or (b * block - lead) in present

    kept: list[int] = []
    order = sorted(groups, key=lambda b: (-len(groups[b]), not led(b), b))
    for group in (groups[b] for b in order):
        room = count - len(kept)
        if room <= 0:
            break
        kept += sorted(group, key=lambda i: addresses[i])[:room]
    if lead:
        where = {a: i for i, a in enumerate(addresses)}
        held = {addresses[i] for i in kept}
        for r in merge([(a, lead) for a in held]):
            below = where.get(r.start - lead)
            if r.start % block == 0 and below is not None:
                kept.append(below)
    return sorted(kept)


# A mapping of a file with holes must not reserve pages for them (there are none left).
MAP_NORESERVE = getattr(mmap, "MAP_NORESERVE", 0x4000)
FALLOC_FL_KEEP_SIZE = 0x01
FALLOC_FL_PUNCH_HOLE = 0x02


def _punch(fd: int, offset: int, length: int) -> None:
    """Free the pages of the file in [OFFSET, OFFSET+LENGTH) (hugetlbfs supports hole punching)."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]
    if libc.fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, offset, length) != 0:
        err = ctypes.get_errno()
        raise RamError(f"cannot free the hugepages not chosen: {os.strerror(err)}")


def _physical(addr: int, length: int, page: int) -> list[int]:
    """Physical addresses of the pages of PAGE bytes mapped at ADDR (faulted in)."""
    small = os.sysconf("SC_PAGE_SIZE")
    out = []
    with open("/proc/self/pagemap", "rb") as f:
        for off in range(0, length, page):
            f.seek((addr + off) // small * 8)
            (entry,) = struct.unpack("<Q", f.read(8))
            pfn = entry & PAGEMAP_PFN
            if not entry & PAGEMAP_PRESENT or pfn == 0:
                raise RamError(
                    "cannot read the physical address of a hugepage (/proc/self/pagemap needs root)"
                )
            out.append(pfn * small)
    return out


def take(
    directory: Path, size: int, page: int, spare: int = 0, block: int = MEMORY_BLOCK, lead: bool = False
) -> Taken:
    """Take SIZE bytes (rounded up to PAGE) as hugetlb pages of a file in DIRECTORY (a hugetlbfs mount).

    With SPARE, up to that many bytes more are taken first, and the pages kept
    are chosen (``choose``): whole memory blocks first, so fewer ranges and
    more RAM the new kernel can get back; the others are freed again at once.
    LEAD: keep the page below each such range too (``choose``).
    nr_hugepages ends raised by what is kept; on failure everything is given
    back and RamError says how much could be had.
    """
    count = -(-size // page)
    nr = _nr_path(page)
    before = int(nr.read_text())
    nr.write_text(f"{before + count + spare // page}\n")
    got = int(nr.read_text()) - before
    path = directory / "images"
    try:
        if got < count:
            raise RamError(
                f"only {got} of {count} hugepages of {page >> 20} MiB could be taken now "
                f"({got * page >> 20} of {count * page >> 20} MiB): free memory or compact it "
                "(echo 1 > /proc/sys/vm/compact_memory), or boot with movablecore=SIZE, which keeps "
                "that much memory movable so that compaction can make 2 MiB pages there"
            )
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.ftruncate(fd, got * page)
            with mmap.mmap(fd, got * page, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE) as m:
                for off in range(0, got * page, page):
                    m[off] = 0  # fault each page in: the file now owns it
                addr = _address(m)
                addresses = _physical(addr, got * page, page)
            kept = choose(addresses, count, block, page if lead else 0) if got > count else list(range(got))
            for i in sorted(set(range(got)) - set(kept)):
                _punch(fd, i * page, page)
        finally:
            os.close(fd)
        # The pages punched out are free in the pool again: give them back to the kernel.
        nr.write_text(f"{before + len(kept)}\n")
    except BaseException:
        path.unlink(missing_ok=True)
        nr.write_text(f"{before}\n")
        raise
    return Taken(path, page, [addresses[i] for i in kept], kept)


def _address(m: mmap.mmap) -> int:
    buf = (ctypes.c_char * 1).from_buffer(m)
    try:
        return ctypes.addressof(buf)
    finally:
        del buf


def lower(page: int, count: int) -> None:
    """Lower nr_hugepages of PAGE-sized pages by COUNT: free pages go back to the kernel."""
    nr = _nr_path(page)
    now = int(nr.read_text())
    nr.write_text(f"{max(0, now - count)}\n")


def give_back(taken: Taken) -> None:
    """Remove the file and lower nr_hugepages by its pages again."""
    taken.path.unlink(missing_ok=True)
    lower(taken.page, len(taken.addresses))


@contextlib.contextmanager
def hugetlbfs(directory: Path, page: int) -> Iterator[Path]:
    """A private hugetlbfs mount of PAGE-sized pages at DIRECTORY, for the time of the block."""
    libc = ctypes.CDLL(None, use_errno=True)
    directory.mkdir(parents=True, exist_ok=True)
    opts = f"pagesize={page >> 10}K,mode=0700".encode()
    if libc.mount(b"none", str(directory).encode(), b"hugetlbfs", 0, opts) != 0:
        err = ctypes.get_errno()
        raise RamError(f"cannot mount hugetlbfs at {directory}: {os.strerror(err)}")
    try:
        yield directory
    finally:
        libc.umount2(str(directory).encode(), 0)
