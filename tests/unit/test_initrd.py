"""The initramfs reader: names from newc archives, plain and compressed, as the image builders lay them out.

The archives are written here by the format's rules (the kernel's buffer-format.rst) and compressed by
the real commands; the VM tests read the images initramfs-tools and dracut build (plan refuses an
image without our hook, so a wrong listing fails them).
"""

import shutil
import subprocess
from pathlib import Path

import pytest

from seamless_systemd import initrd


def newc(entries: list[tuple[str, bytes]]) -> bytes:
    """A cpio archive in the newc format, as `cpio -o -H newc` writes it, with its trailer."""
    out = b""
    for ino, (name, body) in enumerate([*entries, ("TRAILER!!!", b"")], start=1):
        fields = [ino, 0o100644, 0, 0, 1, 0, len(body), 0, 0, 0, 0, len(name) + 1, 0]
        header = b"070701" + b"".join(b"%08X" % v for v in fields)
        out += header + name.encode() + b"\0"
        out += b"\0" * (-len(out) % 4) + body
        out += b"\0" * (-len(out) % 4)
    return out + b"\0" * (-len(out) % 512)


EARLY = [("kernel", b""), ("kernel/x86", b""), ("kernel/x86/microcode/GenuineIntel.bin", b"\x01" * 1000)]
MAIN = [
    (".", b""),
    ("usr/lib/modules/6.1.0-53-cloud-amd64/kernel/drivers/nvdimm/nd_pmem.ko", b"\x7fELF" + b"m" * 5001),
    ("scripts/init-premount/seamless", b"#!/bin/sh\n"),
    ("init", b"#!/bin/sh\nexec /sbin/init\n" * 3),
]


def compress(data: bytes, argv: list[str]) -> bytes:
    if shutil.which(argv[0]) is None:
        pytest.skip(f"{argv[0]} not installed")
    return subprocess.run(argv, input=data, capture_output=True, check=True).stdout


def names_of(tmp_path: Path, image: bytes) -> list[str] | None:
    path = tmp_path / "initrd.img"
    path.write_bytes(image)
    return initrd.listing(path)


def test_plain_archive(tmp_path: Path) -> None:
    assert names_of(tmp_path, newc(MAIN)) == [n for n, _ in MAIN]


@pytest.mark.parametrize(
    "argv",
    [
        ["gzip", "-c"],
        ["zstd", "-q", "-c"],
        ["xz", "-c", "--check=crc32"],
        ["lz4", "-l", "-c"],
        ["bzip2", "-c"],
    ],
    ids=lambda a: a[0],
)
def test_early_archive_then_a_compressed_one(tmp_path: Path, argv: list[str]) -> None:
    """initramfs-tools' and dracut's layout: microcode uncompressed, padding, the rest compressed."""
    image = newc(EARLY) + b"\0" * 1024 + compress(newc(MAIN), argv)
    assert names_of(tmp_path, image) == [n for n, _ in EARLY] + [n for n, _ in MAIN]


def test_compressed_only(tmp_path: Path) -> None:
    """Debian 12's initramfs-tools with no microcode: one zstd archive."""
    assert names_of(tmp_path, compress(newc(MAIN), ["zstd", "-q", "-c"])) == [n for n, _ in MAIN]


def test_damaged_image_asks_the_distributions_lister(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    image = newc(MAIN)[:300]  # cut in the middle of a file
    with pytest.raises(initrd.Unreadable):
        (tmp_path / "cut.img").write_bytes(image)
        initrd.names(tmp_path / "cut.img")
    asked: list[list[str]] = []

    def lister(argv: list[str], timeout: int) -> subprocess.CompletedProcess[str]:
        asked.append(argv)
        return subprocess.CompletedProcess(argv, 0, "init\nscripts/init-premount/seamless\n", "")

    monkeypatch.setattr(
        initrd.shutil, "which", lambda name: f"/usr/bin/{name}" if name == "lsinitramfs" else None
    )
    monkeypatch.setattr(initrd, "run", lister)
    assert names_of(tmp_path, image) == ["init", "scripts/init-premount/seamless"]
    assert asked == [["/usr/bin/lsinitramfs", str(tmp_path / "initrd.img")]]


def test_unknown_data_and_no_lister_is_not_known(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(initrd.shutil, "which", lambda name: None)
    assert names_of(tmp_path, b"MZ not an initramfs" * 10) is None


def test_a_garbled_name_size_is_unreadable_not_a_huge_read(tmp_path: Path) -> None:
    image = bytearray(newc(MAIN))
    image[94:102] = b"FFFFFFF0"  # the first entry's name size
    (tmp_path / "garbled.img").write_bytes(bytes(image))
    with pytest.raises(initrd.Unreadable, match="cpio name of"):
        initrd.names(tmp_path / "garbled.img")
