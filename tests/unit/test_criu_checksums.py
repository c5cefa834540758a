"""The images' checksums (criu.checksum_tree / checksums_match): a flipped bit is caught."""

from __future__ import annotations

import hashlib
import zlib
from pathlib import Path

import pytest

from seamless_systemd import criu


def images(tmp_path: Path) -> Path:
    d = tmp_path / "images"
    (d / "sub").mkdir(parents=True)
    (d / "pages-1.img").write_bytes(bytes(range(256)) * 8192)
    (d / "sub" / "core.img").write_bytes(b"core")
    return d


@pytest.mark.parametrize("algorithm", ["crc32", "sha256"])
def test_a_flipped_bit_is_caught(tmp_path: Path, algorithm: str) -> None:
    d = images(tmp_path)
    sums = criu.checksum_tree(d, algorithm)
    assert sums["algorithm"] == algorithm and set(sums["files"]) == {"pages-1.img", "sub/core.img"}
    assert criu.checksums_match(d, sums) == []
    data = bytearray((d / "pages-1.img").read_bytes())
    data[1_000_000] ^= 0x08
    (d / "pages-1.img").write_bytes(bytes(data))
    assert criu.checksums_match(d, sums) == ["pages-1.img"]
    # A file that appeared, or went, is a mismatch too.
    (d / "extra.img").write_bytes(b"x")
    (d / "sub" / "core.img").unlink()
    assert criu.checksums_match(d, sums) == ["extra.img", "pages-1.img", "sub/core.img"]


def test_the_values_are_the_standard_ones(tmp_path: Path) -> None:
    d = images(tmp_path)
    data = (d / "pages-1.img").read_bytes()
    assert criu.checksum_file(d / "pages-1.img", "crc32") == f"{zlib.crc32(data):08x}"
    assert criu.checksum_file(d / "pages-1.img", "sha256") == hashlib.sha256(data).hexdigest()


def test_an_older_plain_sha256_mapping_is_still_read(tmp_path: Path) -> None:
    d = images(tmp_path)
    legacy = criu.checksum_tree(d, "sha256")["files"]
    assert criu.checksums_match(d, legacy) == []
    assert criu.checksums_match(d, {"algorithm": "md4", "files": {}}) is None
