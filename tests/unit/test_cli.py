"""The front door: a caller who is not root is refused before anything is touched."""

from __future__ import annotations

import pytest

from seamless_systemd import cli, config, ram, restore, upgrade


@pytest.mark.parametrize(
    "argv",
    [
        ["plan"],
        ["arm"],
        ["run"],
        ["disarm"],
        ["checkpoint", "db.service"],
        ["restore-unit", "db.service"],
        ["restore-prepare"],
        ["restore-finish"],
        ["warm-page-cache"],
        ["ram-serve"],
    ],
)
def test_non_root_is_refused_before_anything(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, argv: list[str]
) -> None:
    def touched(*args: object, **kwargs: object) -> int:
        raise AssertionError(f"{argv[0]} went ahead for a caller who is not root")

    monkeypatch.setattr(cli.os, "geteuid", lambda: 1000)
    # The logger as a test run has it (setup would point it at this test's stderr for good).
    monkeypatch.setattr(cli.log, "setup", lambda debug: None)
    for mod, name in (
        (upgrade, "checkpoint"),
        (restore, "restore_unit"),
        (restore, "prepare"),
        (restore, "finish"),
        (restore, "warm_page_cache"),
        (ram, "serve"),
        (config, "load"),
    ):
        monkeypatch.setattr(mod, name, touched)
    assert cli.main(argv) != 0
    assert "root" in caplog.text and f"'seamless-upgrade {argv[0]}'" in caplog.text
