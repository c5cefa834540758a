"""The lazy restore's server: when it cannot start, the restore is an eager one, and says so."""

import logging
from pathlib import Path

import pytest

from seamless_systemd import criu


def test_no_lazy_pages_server_means_an_eager_restore(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(criu, "CRIU", str(tmp_path / "no-such-criu"))
    monkeypatch.setattr(criu.log, "propagate", True)
    (tmp_path / criu.LAZY_SOCKET).write_text("left by an earlier attempt")
    with caplog.at_level(logging.WARNING):
        assert criu._start_lazy_pages(tmp_path, tmp_path / "unit.lazy.log") is None
    assert "restoring all the memory now" in caplog.text
    # A socket file left behind would make the server refuse to listen: it is cleared first.
    assert not (tmp_path / criu.LAZY_SOCKET).exists()
