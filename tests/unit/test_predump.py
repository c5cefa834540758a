"""Pre-dump bookkeeping (seamless_systemd/predump.py): CRIU's stats file, the parent round, the checksums."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest

from seamless_systemd import criu, imagesums, predump, state


def varint(n: int) -> bytes:
    out = b""
    while True:
        b, n = n & 0x7F, n >> 7
        out += bytes([b | (0x80 if n else 0)])
        if not n:
            return out


def field(number: int, value: int | bytes) -> bytes:
    if isinstance(value, int):
        return varint(number << 3) + varint(value)
    return varint(number << 3 | 2) + varint(len(value)) + value


def stats_file(path: Path, **dump: int) -> None:
    numbers = {v: k for k, v in predump._DUMP_STATS.items()}
    inner = b"".join(field(numbers[k], v) for k, v in dump.items())
    entry = field(1, inner)
    path.write_bytes(struct.pack("<III", 0x55105940, 0x57093306, len(entry)) + entry)


def test_criu_stats_are_read(tmp_path: Path) -> None:
    stats_file(tmp_path / "stats-dump", frozen_time_us=812345, pages_written=300, pages_skipped_parent=16384)
    got = predump.dump_stats(tmp_path)
    assert got == {"frozen_time_us": 812345, "pages_written": 300, "pages_skipped_parent": 16384}
    (tmp_path / "stats-dump").write_bytes(b"\x00" * 7)
    assert predump.dump_stats(tmp_path) == {}
    assert predump.dump_stats(tmp_path / "none") == {}


def test_the_final_dump_builds_on_the_rounds_of_the_same_tree_only(tmp_path: Path) -> None:
    images = tmp_path / "images"
    (images / "pre-2").mkdir(parents=True)
    state.write_json(tmp_path / predump.RECORD, {"parent": "pre-2", "pids": [10, 11], "rounds": []})
    assert predump.parent_for(tmp_path, images, (10, 11)) == "pre-2"
    # Restarted or forked since: dumped whole.
    assert predump.parent_for(tmp_path, images, (10, 12)) is None
    state.write_json(tmp_path / predump.RECORD, {"parent": "../x", "pids": [10, 11]})
    assert predump.parent_for(tmp_path, images, (10, 11)) is None
    (tmp_path / predump.RECORD).write_text("{")
    assert predump.parent_for(tmp_path, images, (10, 11)) is None


def test_checksums_cover_every_round_once(tmp_path: Path) -> None:
    images = tmp_path / "images"
    for d, data in (("pre-0", b"a" * 8192), ("pre-1", b"b" * 10), ("", b"c")):
        (images / d).mkdir(parents=True, exist_ok=True)
        (images / d / "pages-1.img").write_bytes(data)
    # CRIU's links from each dump to the round before.
    (images / "parent").symlink_to("pre-1")
    (images / "pre-1" / "parent").symlink_to("../pre-0")
    files = imagesums.sums(images)["files"]
    assert sorted(files) == ["pages-1.img", "pre-0/pages-1.img", "pre-1/pages-1.img"]
    assert predump.pages_bytes(images / "pre-0") == 8192


def test_rounds_stop_when_the_delta_stops_shrinking(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The stopping rule alone: each "round" here writes a pages file of the size given.
    images = tmp_path / "images"
    (images / "pre-0").mkdir(parents=True)
    (images / "pre-0" / "pages-1.img").write_bytes(b"x" * (64 << 20))
    sizes = iter([16 << 20, 14 << 20, 1 << 20])
    argvs: list[list[str]] = []

    def fake_run(argv: list[str], **_: object) -> None:
        argvs.append(argv)
        here = Path(argv[argv.index("--images-dir") + 1])
        (here / "pages-1.img").write_bytes(b"y" * next(sizes))

    monkeypatch.setattr(predump, "run", fake_run)
    rec = predump.rounds(100, (100, 101), images, tmp_path, timeout=10)
    # 64 -> 16 MiB shrank; 16 -> 14 MiB did not shrink by a fifth: two rounds, pre-2 is the parent.
    assert [r["bytes"] for r in rec["rounds"]] == [64 << 20, 16 << 20, 14 << 20]
    assert rec["parent"] == "pre-2" and rec["pids"] == [100, 101]
    assert argvs[1][argvs[1].index("--prev-images-dir") + 1] == "../pre-1"
    assert "--track-mem" in argvs[0] and "--pre-dump-mode=read" in argvs[0]


@pytest.mark.parametrize("patched", [False, True])
def test_rounds_leave_their_pages_lazy_when_criu_can(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, patched: bool
) -> None:
    """--lazy-parent-pages (packaging/criu/0002) on every round built on a parent, if this CRIU has it."""
    images = tmp_path / "images"
    (images / "pre-0").mkdir(parents=True)
    (images / "pre-0" / "pages-1.img").write_bytes(b"x" * (4 << 20))
    argvs: list[list[str]] = []

    def fake_run(argv: list[str], **_: object) -> None:
        argvs.append(argv)
        (Path(argv[argv.index("--images-dir") + 1]) / "pages-1.img").write_bytes(b"y" * (4 << 20))

    monkeypatch.setattr(predump, "run", fake_run)
    monkeypatch.setattr(criu, "help_text", lambda: "  --lazy-parent-pages\twith ..." if patched else "")
    predump.rounds(100, (100,), images, tmp_path, timeout=10)
    assert argvs and all(("--lazy-parent-pages" in a) == patched for a in argvs)
    assert criu.parent_options() == (["--lazy-parent-pages"] if patched else [])
