"""hugepages: which ranges are asked, and a real collapse of a child process's memory on this kernel."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from seamless_systemd import hugepages

MAPS = """\
55d0c0000000-55d0c0021000 r--p 00000000 fe:01 1234   /usr/bin/python3.11
55d0c1000000-55d0c1a00000 rw-p 00000000 00:00 0      [heap]
7f0000100000-7f0010300000 rw-p 00000000 00:00 0
7f0020000000-7f0020100000 rw-p 00000000 00:00 0
7f0030000000-7f0030800000 rw-s 00000000 00:01 99     /dev/zero (deleted)
7f0040000000-7f0040800000 r--p 00000000 00:00 0
7f0050000000-7f0050800000 rw-p 00000000 fe:01 77     /var/lib/data.bin
7ffd00000000-7ffd00400000 rw-p 00000000 00:00 0      [stack]
"""


def test_ranges_are_the_aligned_insides_of_private_writable_anonymous_mappings() -> None:
    assert hugepages.ranges(MAPS) == [
        (0x55D0C1000000, 0x55D0C1A00000),  # the heap, 10 MiB, already aligned
        (0x7F0000200000, 0x7F0010200000),  # 258 MiB unaligned at both ends: 256 MiB inside
    ]
    # Left out: a mapping under 2 MiB once aligned, shared, read-only, file-backed, the stack.


def test_a_child_gets_its_memory_back_in_huge_pages() -> None:
    code = textwrap.dedent(
        """
        import mmap, sys
        buf = mmap.mmap(-1, 32 << 20, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
        buf.write(b"x" * (32 << 20))
        print("ready", flush=True)
        sys.stdin.read()
        """
    )
    child = subprocess.Popen(
        [sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert child.stdout is not None and child.stdout.readline().strip() == "ready"
        before = hugepages.anon_huge_kib(child.pid) or 0
        if before >= 28 << 10:
            pytest.skip("transparent_hugepage=always here: the memory is in huge pages already")
        got = hugepages.collapse(child.pid)
        if got.get("errors", {}).get("Invalid argument") and not got["collapsed_bytes"]:
            pytest.skip(f"this kernel has no process_madvise(MADV_COLLAPSE): {got}")
        assert got["asked_bytes"] >= 30 << 20, got
        assert got["huge_kib_after"] >= before + (28 << 10), got
    finally:
        child.kill()
        child.wait()


def test_a_process_that_is_gone_is_an_error_not_a_crash() -> None:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    assert "error" in hugepages.collapse(p.pid)
