"""The images' checksums (imagesums): a flipped bit is caught, in pieces, and the rounds' sums reused."""

from __future__ import annotations

import hashlib
import os
import zlib
from pathlib import Path

import pytest

from seamless_systemd import imagesums
from seamless_systemd.imagesums import PIECE


def images(tmp_path: Path) -> Path:
    d = tmp_path / "images"
    (d / "sub").mkdir(parents=True)
    # Three pieces and a bit: the pieces are hashed side by side.
    (d / "pages-1.img").write_bytes(os.urandom(3 * PIECE + 5000))
    (d / "sub" / "core.img").write_bytes(b"core")
    return d


@pytest.mark.parametrize("algorithm", ["crc32", "sha256"])
def test_a_flipped_bit_is_caught(tmp_path: Path, algorithm: str) -> None:
    d = images(tmp_path)
    sums = imagesums.sums(d, algorithm)
    assert sums["algorithm"] == algorithm and set(sums["files"]) == {"pages-1.img", "sub/core.img"}
    assert len(sums["files"]["pages-1.img"]) == 4
    assert imagesums.mismatches(d, sums) == []
    for where in (1_000_000, 3 * PIECE + 4999):  # in a whole piece, and in the last short one
        data = bytearray((d / "pages-1.img").read_bytes())
        data[where] ^= 0x08
        (d / "pages-1.img").write_bytes(bytes(data))
        assert imagesums.mismatches(d, sums) == ["pages-1.img"]
        data[where] ^= 0x08
        (d / "pages-1.img").write_bytes(bytes(data))
    # A file that appeared, or went, is a mismatch too.
    (d / "extra.img").write_bytes(b"x")
    (d / "sub" / "core.img").unlink()
    assert imagesums.mismatches(d, sums) == ["extra.img", "sub/core.img"]


def test_the_values_are_the_standard_ones(tmp_path: Path) -> None:
    d = images(tmp_path)
    data = (d / "pages-1.img").read_bytes()
    assert imagesums.whole_file(d / "pages-1.img", "crc32") == f"{zlib.crc32(data):08x}"
    assert imagesums.whole_file(d / "pages-1.img", "sha256") == hashlib.sha256(data).hexdigest()
    pieces = imagesums.sums(d, "crc32")["files"]["pages-1.img"]
    assert pieces[1] == f"{zlib.crc32(data[PIECE : 2 * PIECE]):08x}"


def test_older_forms_are_still_read(tmp_path: Path) -> None:
    d = images(tmp_path)
    whole = {str(p.relative_to(d)): imagesums.whole_file(p, "sha256") for p in d.rglob("*.img")}
    # A plain path -> sha256 mapping, then one checksum per file with its algorithm.
    assert imagesums.mismatches(d, whole) == []
    crc = {str(p.relative_to(d)): imagesums.whole_file(p, "crc32") for p in d.rglob("*.img")}
    assert imagesums.mismatches(d, {"algorithm": "crc32", "files": crc}) == []
    assert imagesums.mismatches(d, {"algorithm": "md4", "files": {}}) is None


def punch(path: Path, offset: int, length: int) -> None:
    """What CRIU's --auto-dedup does to a round's pages: fallocate(PUNCH_HOLE | KEEP_SIZE)."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(path, os.O_RDWR)
    try:
        if libc.fallocate(fd, 0x02 | 0x01, ctypes.c_long(offset), ctypes.c_long(length)) != 0:
            pytest.skip(f"this file system cannot punch holes: {os.strerror(ctypes.get_errno())}")
    finally:
        os.close(fd)


def test_the_rounds_pieces_are_read_again_only_where_holes_were_punched(tmp_path: Path) -> None:
    img = tmp_path / "images"
    (img / "pre-0").mkdir(parents=True)
    (img / "pre-0" / "pages-1.img").write_bytes(os.urandom(4 * PIECE))
    noted = imagesums.note_rounds(img, ["pre-0"], "crc32")
    assert noted["data"]["pre-0/pages-1.img"][:4] == [PIECE] * 4  # then the room the file takes
    # The final dump: a file of its own, and a page punched out of the round's second piece.
    (img / "pages-2.img").write_bytes(os.urandom(8192))
    punch(img / "pre-0" / "pages-1.img", PIECE + 4096, 4096)
    sums = imagesums.sums(img, "crc32", known=noted)
    assert sums["hashed_bytes"] == PIECE + 8192  # the punched piece and the new file, nothing else
    assert imagesums.mismatches(img, sums) == []
    # Taken as noted, a piece that changed without losing data is still caught by the check.
    with (img / "pre-0" / "pages-1.img").open("r+b") as f:
        f.seek(3 * PIECE + 10)
        f.write(b"\xff")
    stale = imagesums.sums(img, "crc32", known=noted)
    assert stale["hashed_bytes"] == PIECE + 8192
    assert imagesums.mismatches(img, stale) == ["pre-0/pages-1.img"]


def test_data_bytes_per_piece(tmp_path: Path) -> None:
    f = tmp_path / "sparse"
    with f.open("wb") as out:
        out.truncate(3 * PIECE)
        out.seek(PIECE + 100)
        out.write(b"x" * 10)
    fd = os.open(f, os.O_RDONLY)
    try:
        got = imagesums.data_bytes(fd, 3 * PIECE)
    finally:
        os.close(fd)
    assert got[0] == 0 and got[2] == 0 and 10 <= got[1] <= PIECE


def test_metadata_now_pages_later(tmp_path: Path) -> None:
    d = images(tmp_path)
    sums = imagesums.sums(d)
    data = bytearray((d / "pages-1.img").read_bytes())
    data[PIECE + 7] ^= 0x01
    (d / "pages-1.img").write_bytes(bytes(data))
    # Before the restore: everything but the pages' contents.
    assert imagesums.mismatches(d, sums, imagesums.METADATA) == []
    # While CRIU restores: the pages' contents.
    assert imagesums.mismatches(d, sums, imagesums.PAGES) == ["pages-1.img"]
    # A page file gone, or a new one, is caught before the restore.
    (d / "pages-1.img").rename(d / "pages-2.img")
    assert imagesums.mismatches(d, sums, imagesums.METADATA) == ["pages-1.img", "pages-2.img"]
    (d / "sub" / "core.img").write_bytes(b"CORE")
    assert "sub/core.img" in (imagesums.mismatches(d, sums, imagesums.METADATA) or [])


def test_the_pages_check_gates_the_tree(tmp_path: Path) -> None:
    """restore.PagesCheck writes its verdict; criu-action's post-restore waits for it and says yes or no."""
    import subprocess
    import time

    from seamless_systemd import restore

    script = Path(__file__).parents[2] / "libexec" / "criu-action"
    d = images(tmp_path)
    sums = imagesums.sums(d)

    def gate(verdict: Path) -> int:
        env = {
            "PATH": os.environ["PATH"],
            "CRTOOLS_SCRIPT_ACTION": "post-restore",
            "SEAMLESS_PAGES_VERDICT": str(verdict),
        }
        return subprocess.run(["sh", str(script)], env=env, timeout=60).returncode

    good = restore.PagesCheck(d, sums, tmp_path / "good.pages")
    assert gate(good.path) == 0 and good.result() is None
    assert good.path.read_text() == "ok\n" and good.seconds is not None
    data = bytearray((d / "pages-1.img").read_bytes())
    data[5] ^= 0x01
    (d / "pages-1.img").write_bytes(bytes(data))
    bad = restore.PagesCheck(d, sums, tmp_path / "bad.pages")
    assert gate(bad.path) == 1
    assert bad.result() == "images damaged: checksum mismatch in pages-1.img"
    # The action waits for a verdict still to come.
    late = tmp_path / "late.pages"
    env = {
        "PATH": os.environ["PATH"],
        "CRTOOLS_SCRIPT_ACTION": "post-restore",
        "SEAMLESS_PAGES_VERDICT": str(late),
    }
    proc = subprocess.Popen(["sh", str(script)], env=env)
    time.sleep(0.5)
    assert proc.poll() is None
    late.write_text("ok\n")
    assert proc.wait(timeout=30) == 0


def test_holes_the_file_system_does_not_show_mean_every_piece_is_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    img = tmp_path / "images"
    (img / "pre-0").mkdir(parents=True)
    (img / "pre-0" / "pages-1.img").write_bytes(os.urandom(4 * PIECE))
    noted = imagesums.note_rounds(img, ["pre-0"], "crc32")
    punch(img / "pre-0" / "pages-1.img", PIECE, 4096)
    # A file system whose SEEK_DATA/SEEK_HOLE call the whole file data (the generic fallback).
    monkeypatch.setattr(imagesums, "data_bytes", lambda fd, size, piece=PIECE: [piece] * (size // piece))
    sums = imagesums.sums(img, "crc32", known=noted)
    assert sums["hashed_bytes"] == 4 * PIECE
    assert imagesums.mismatches(img, sums) == []


@pytest.mark.parametrize("algorithm", ["crc32", "sha256"])
def test_pieces_are_the_bytes_read(tmp_path: Path, algorithm: str) -> None:
    """Mapped, not read: the checksums of the bytes read, with holes, a short last piece, empty files."""
    f = tmp_path / "pages-2.img"
    with open(f, "wb") as out:
        out.write(os.urandom(PIECE // 2))
        out.seek(PIECE + 4096)  # a hole across a piece's end
        out.write(os.urandom(12345))
    (tmp_path / "empty.img").write_bytes(b"")
    got = imagesums.sums(tmp_path, algorithm)["files"]
    data = f.read_bytes()
    pieces = [data[i : i + PIECE] for i in range(0, len(data), PIECE)]

    def digest(b: bytes) -> str:
        return f"{zlib.crc32(b):08x}" if algorithm == "crc32" else hashlib.sha256(b).hexdigest()

    assert got["pages-2.img"] == [digest(p) for p in pieces] and len(pieces) == 2
    assert got["empty.img"] == []
    assert imagesums.whole_file(f, algorithm) == digest(data)
    assert imagesums.whole_file(tmp_path / "empty.img", algorithm) == digest(b"")
