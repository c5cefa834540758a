"""The files a tree holds open, noted at the checkpoint, looked at again before the restore."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from seamless_systemd import openfiles, volatile


@pytest.fixture
def on_disk() -> Iterator[Path]:
    """A directory on a persistent file system (not tmpfs: those files are carried by copy)."""
    for base in ("/var/tmp", str(Path.home()), os.getcwd()):
        d = Path(tempfile.mkdtemp(dir=base))
        if os.stat(d).st_dev not in volatile.volatile_devices():
            break
    else:
        pytest.skip("no persistent file system to write to")
    yield d
    for p in d.iterdir():
        p.unlink()
    d.rmdir()


def holder(path: Path) -> subprocess.Popen[str]:
    code = f"import sys, time; f = open({str(path)!r}, 'a'); print('ready', flush=True); time.sleep(60)"
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline() == "ready\n"
    return proc


def test_held_files_noted_and_found_the_same(on_disk: Path) -> None:
    data = on_disk / "data"
    data.write_text("hello\n")
    proc = holder(data)
    try:
        assert openfiles.held([proc.pid]) == [str(data)]
    finally:
        proc.kill()
        proc.wait()
    noted = openfiles.identities([str(data), str(on_disk / "never-there")])
    assert noted == [{"path": str(data), "ino": data.stat().st_ino, "size": 6}]
    assert openfiles.problem(noted) is None


@pytest.mark.parametrize("change", ["gone", "replaced", "changed"])
def test_a_file_gone_replaced_or_changed_is_named(on_disk: Path, change: str) -> None:
    data = on_disk / "data"
    data.write_text("hello\n")
    noted = openfiles.identities([str(data)])
    if change == "gone":
        data.unlink()
    elif change == "replaced":  # as tmpfiles or a package would: a new file renamed over it
        (on_disk / "new").write_text("hello\n")
        os.rename(on_disk / "new", data)
    else:
        with data.open("a") as f:
            f.write("more\n")
    why = openfiles.problem(noted)
    assert why is not None and str(data) in why and change in why, why


def test_garbled_records_are_no_reason() -> None:
    assert openfiles.problem(None) is None
    assert openfiles.problem([1, {"path": 2}, "x"]) is None
