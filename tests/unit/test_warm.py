"""warm: the page cache noted with mincore and read back, on real files of this machine."""

from __future__ import annotations

import json
import mmap
import os
from pathlib import Path

from seamless_systemd import warm

PAGE = mmap.PAGESIZE


def _file(tmp_path: Path, pages: int) -> Path:
    f = tmp_path / "data"
    f.write_bytes(os.urandom(pages * PAGE))
    return f


def _evict(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fdatasync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def test_resident_sees_the_pages_that_were_read(tmp_path: Path) -> None:
    f = _file(tmp_path, 64)
    _evict(f)
    fd = os.open(f, os.O_RDONLY)
    try:
        before = warm.resident(fd, 64 * PAGE)
        os.pread(fd, 4 * PAGE, 10 * PAGE)
        after = warm.resident(fd, 64 * PAGE)
    finally:
        os.close(fd)
    # Some file systems (tmpfs) cannot drop their pages: then everything is resident.
    if before == [[0, 64]]:
        assert after == [[0, 64]]
        return
    assert sum(c for _, c in after) >= 4
    assert any(start <= 10 and start + count >= 14 for start, count in after)


def test_coarsen_merges_the_closest_ranges_first() -> None:
    ranges = [[0, 1], [2, 1], [10, 1], [100, 1]]
    assert warm.coarsen(ranges, 4) == ranges
    assert warm.coarsen(ranges, 3) == [[0, 3], [10, 1], [100, 1]]
    assert warm.coarsen(ranges, 1) == [[0, 101]]


def test_record_then_rewarm_reads_back_only_unchanged_files(tmp_path: Path) -> None:
    same = _file(tmp_path, 16)
    changed = tmp_path / "changed"
    changed.write_bytes(os.urandom(8 * PAGE))
    for f in (same, changed):
        f.read_bytes()  # resident now
    dest = tmp_path / "page-cache.json"
    refs = [warm.FileRef(str(same), str(same)), warm.FileRef(str(changed), str(changed))]
    summary = warm.record(refs, dest)
    assert summary["files"] == 2
    assert summary["bytes"] == 24 * PAGE
    changed.write_bytes(os.urandom(9 * PAGE))  # replaced after the checkpoint
    _evict(same)
    result = warm.rewarm([json.loads(dest.read_text())])
    assert result["asked_bytes"] == 24 * PAGE
    # What the eviction left resident is not read again.
    assert result["read_bytes"] + result["already_cached_bytes"] == 16 * PAGE
    assert result["skipped_files"] == 1
    assert "changed since the checkpoint" in result["skipped"][0]
    fd = os.open(same, os.O_RDONLY)
    try:
        assert warm.resident(fd, 16 * PAGE) == [[0, 16]]
    finally:
        os.close(fd)


def test_a_file_two_units_listed_is_read_once_and_resident_pages_not_at_all(tmp_path: Path) -> None:
    f = _file(tmp_path, 32)
    f.read_bytes()
    st = f.stat()
    ident = {"path": str(f), "ino": st.st_ino, "size": st.st_size, "mtime_ns": st.st_mtime_ns}
    lists = [
        {"page_size": PAGE, "files": [{**ident, "ranges": [[0, 16]]}]},
        {"page_size": PAGE, "files": [{**ident, "ranges": [[8, 24]]}]},
    ]
    _evict(f)
    fd = os.open(f, os.O_RDONLY)
    try:
        if warm.resident(fd, 32 * PAGE) == [[0, 32]]:
            return  # a file system that cannot drop its pages (tmpfs): nothing to tell apart
        os.pread(fd, 4 * PAGE, 0)  # the first pages came back meanwhile
        cached = sum(c for _, c in warm.resident(fd, 32 * PAGE)) * PAGE
    finally:
        os.close(fd)
    result = warm.rewarm(lists)
    assert result["asked_bytes"] == 32 * PAGE  # the union, not 16 + 24 pages
    assert result["already_cached_bytes"] == cached >= 4 * PAGE
    assert result["read_bytes"] == 32 * PAGE - cached
    assert warm.rewarm(lists)["read_bytes"] == 0  # all resident now


def test_rewarm_survives_a_garbled_list(tmp_path: Path) -> None:
    gone = str(tmp_path / "gone")
    lists = [
        {"files": [{"path": gone, "ino": 1, "size": 1, "mtime_ns": 1, "ranges": [[0, 1]]}]},
        {"files": [{"path": 3}, "junk", {"ranges": "x"}]},
    ]
    result = warm.rewarm(lists)
    assert result["read_bytes"] == 0
    assert result["skipped_files"] == 4


def test_files_of_this_process_include_an_open_file_and_skip_proc(tmp_path: Path) -> None:
    f = _file(tmp_path, 1)
    with open(f, "rb"):
        paths = {r.path for r in warm.files_of([os.getpid()])}
    assert str(f) in paths
    assert not any(p.startswith(("/proc/", "/dev/")) for p in paths)


def test_files_below_walks_a_directory(tmp_path: Path) -> None:
    (tmp_path / "a" / "b").mkdir(parents=True)
    (tmp_path / "a" / "b" / "x").write_text("x")
    (tmp_path / "y").write_text("y")
    assert sorted(r.path for r in warm.files_below([str(tmp_path)])) == [
        str(tmp_path / "a" / "b" / "x"),
        str(tmp_path / "y"),
    ]


def test_resolve_counts_what_exists(tmp_path: Path) -> None:
    (tmp_path / "here").write_text("")
    got = warm.resolve([str(tmp_path / "here"), str(tmp_path / "here"), str(tmp_path / "nope")])
    assert (got["paths"], got["found"]) == (2, 1)
