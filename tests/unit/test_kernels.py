from pathlib import Path

import pytest

from seamless_systemd import kernels
from seamless_systemd.errors import SeamlessError


def make_kernel(boot: Path, mods: Path, version: str, initrd: bool = True) -> None:
    (boot / f"vmlinuz-{version}").write_text("k")
    if initrd:
        (boot / f"initrd.img-{version}").write_text("i")
    (mods / version).mkdir(parents=True)


def test_newest_is_chosen_numerically(tmp_path: Path) -> None:
    boot, mods = tmp_path / "boot", tmp_path / "mods"
    boot.mkdir()
    for v in ("6.1.0-9-cloud-amd64", "6.1.0-53-cloud-amd64", "6.1.0-47-cloud-amd64"):
        make_kernel(boot, mods, v)
    (boot / "vmlinuz-6.9.0-orphan").write_text("no modules")
    found = kernels.installed(boot, mods)
    assert [k.version for k in found] == [
        "6.1.0-9-cloud-amd64",
        "6.1.0-47-cloud-amd64",
        "6.1.0-53-cloud-amd64",
    ]
    assert kernels.choose(found, None).version == "6.1.0-53-cloud-amd64"
    assert kernels.choose(found, "6.1.0-47-cloud-amd64").initrd == boot / "initrd.img-6.1.0-47-cloud-amd64"
    with pytest.raises(SeamlessError, match="not installed"):
        kernels.choose(found, "5.10.0-1-amd64")
    with pytest.raises(SeamlessError, match="no installed kernel"):
        kernels.choose([], None)


def test_new_cmdline_keeps_memmap_and_replaces_our_params() -> None:
    cur = 'BOOT_IMAGE=/vmlinuz root=/dev/vda ro memmap=512M!1536M quiet seamless.restore=old x="a b"'
    new = kernels.new_cmdline(cur, {"seamless.restore": "G1", "seamless.pidfloor": "5000"})
    assert (
        new == 'root=/dev/vda ro memmap=512M!1536M quiet x="a b" seamless.restore=G1 seamless.pidfloor=5000'
    )


def test_memmap_reservations() -> None:
    words = kernels.split_cmdline("memmap=512M!1536M memmap=4G!0x100000000,64K$0x1000 memmap=bad!x mem=4G")
    assert kernels.memmap_reservations(words) == [
        (1536 << 20, 2048 << 20),
        (1 << 32, (1 << 32) + (4 << 30)),
    ]


def test_the_ram_memmap_word_is_ours_and_goes_last() -> None:
    cur = "root=/dev/vda memmap=64M$0x1000000 quiet"
    memmap = "memmap=6M!0x7a000000,128M!0x80000000"
    new = kernels.new_cmdline(cur, {"seamless.restore": "G1"}, memmap)
    assert (
        new == f"root=/dev/vda memmap=64M$0x1000000 quiet seamless.restore=G1 seamless.ram=on-demand {memmap}"
    )
    words = kernels.split_cmdline(new)
    assert kernels.ram_ranges(words) == [(0x7A000000, 0x7A600000), (0x80000000, 0x88000000)]
    # The next upgrade from that boot names neither our ranges nor our words again.
    assert kernels.new_cmdline(new, {}) == cur
    assert kernels.without_ours(words) == ["root=/dev/vda", "memmap=64M$0x1000000", "quiet"]
    # A memmap= the admin wrote elsewhere on the line stays theirs.
    assert kernels.ram_ranges(kernels.split_cmdline("memmap=4G!4G seamless.restore=G")) == []
