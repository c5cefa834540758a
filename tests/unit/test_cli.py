"""The front door: a caller who is not root is refused before anything is touched."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from seamless_systemd import cli, config, fallback, journal, ram, restore, state, systemd, upgrade
from seamless_systemd.errors import LockedError, PreflightError
from tests.unit.test_kernels import bzimage


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


class Reboots:
    """What 'run --or-reboot' asked systemd to start (the reboot itself is the VM's: test_upgrade)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
        self.started: list[tuple[str, str]] = []
        monkeypatch.setattr(cli.os, "geteuid", lambda: 0)
        monkeypatch.setattr(cli.log, "setup", lambda debug: None)
        monkeypatch.setattr(state, "REPORT_DIR", tmp_path / "reports")
        monkeypatch.setattr(journal, "SOCKET", tmp_path / "no-journal")
        monkeypatch.setattr(upgrade, "DPKG_LOCK", tmp_path / "dpkg-lock")
        monkeypatch.setattr(
            systemd, "start_unit", lambda name, mode="replace", wait=0: self.started.append((name, mode))
        )
        # What the boot loader would boot: a whole image, unless a test cuts it.
        monkeypatch.setattr(fallback, "BOOT", tmp_path / "boot")
        monkeypatch.setattr(fallback, "MODULES", tmp_path / "modules")
        uname = os.uname_result(("Linux", "h", "6.1.0-47", "#1", "x86_64"))
        monkeypatch.setattr(os, "uname", lambda: uname)
        self.kernel("6.1.0-53")

    def kernel(self, version: str, cut: int = 0) -> None:
        fallback.BOOT.mkdir(exist_ok=True)
        bzimage(fallback.BOOT / f"vmlinuz-{version}", 4096, cut)
        (fallback.MODULES / version).mkdir(parents=True, exist_ok=True)


def refuse(*problems: str) -> Callable[..., None]:
    def run_upgrade(cfg: object, kernel: str | None = None) -> None:
        raise PreflightError(list(problems))

    return run_upgrade


def test_or_reboot_reboots_when_the_upgrade_is_refused(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    r = Reboots(monkeypatch, tmp_path)
    monkeypatch.setattr(config, "load", lambda d: config.Config())
    monkeypatch.setattr(upgrade, "run_upgrade", refuse("db.service: CRIU cannot dump X", "no PMEM"))
    assert cli.main(["run", "--or-reboot"]) == 0
    assert r.started == [("reboot.target", "replace-irreversibly")]
    assert "rebooting the ordinary way instead" in capsys.readouterr().out
    last = json.loads((tmp_path / "reports" / "last.json").read_text())
    assert last["outcome"] == "rebooted"
    assert last["reason"].endswith("db.service: CRIU cannot dump X; no PMEM"), last
    # Without the option: refused, exit 3, no reboot.
    assert cli.main(["run"]) == 3 and len(r.started) == 1


def test_or_reboot_reboots_on_a_broken_configuration(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    r = Reboots(monkeypatch, tmp_path)
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc" / "config.yaml").write_text("units: [a.service\n")
    assert cli.main(["--config-dir", str(tmp_path / "etc"), "run", "--or-reboot"]) == 0
    assert r.started == [("reboot.target", "replace-irreversibly")]
    assert "config.yaml" in json.loads((tmp_path / "reports" / "last.json").read_text())["reason"]


def test_or_reboot_does_neither_while_dpkg_or_another_upgrade_is_at_work(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    r = Reboots(monkeypatch, tmp_path)
    monkeypatch.setattr(config, "load", lambda d: config.Config())
    monkeypatch.setattr(upgrade, "run_upgrade", refuse("a package manager is at work"))
    # A real fcntl write lock on the file, held by a process of its own, as dpkg holds it.
    lock = tmp_path / "dpkg-lock"
    lock.touch()
    take = (
        "import fcntl, sys, time; f = open(sys.argv[1], 'w'); fcntl.lockf(f, fcntl.LOCK_EX); time.sleep(30)"
    )
    holder = subprocess.Popen([sys.executable, "-c", take, str(lock)])
    try:
        for _ in range(50):
            if upgrade.lock_holder(lock) is not None:
                break
            time.sleep(0.1)
        assert cli.main(["run", "--or-reboot"]) == cli.TRY_AGAIN
    finally:
        holder.kill()
        holder.wait()
    assert "run again once it has finished" in caplog.text

    def locked(cfg: object, kernel: str | None = None) -> None:
        raise LockedError("another seamless-upgrade is running")

    monkeypatch.setattr(upgrade, "run_upgrade", locked)
    assert cli.main(["run", "--or-reboot"]) == cli.TRY_AGAIN
    assert r.started == [] and not (tmp_path / "reports").exists()


def test_or_reboot_does_not_reboot_into_a_damaged_kernel(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The boot loader's default, the newest kernel, is cut short: an ordinary reboot would not come back."""
    r = Reboots(monkeypatch, tmp_path)
    monkeypatch.setattr(config, "load", lambda d: config.Config())
    monkeypatch.setattr(upgrade, "run_upgrade", refuse("/boot/vmlinuz-6.1.0-53 is cut short"))
    r.kernel("6.1.0-47")
    r.kernel("6.1.0-53", cut=100)
    assert cli.main(["run", "--or-reboot"]) == 1
    assert r.started == [] and "Not rebooting either" in caplog.text and "cut short" in caplog.text
    # The older kernel, named, is whole: that reboot goes ahead.
    assert cli.main(["run", "--or-reboot", "--kernel", "6.1.0-47"]) == 0
    assert r.started == [("reboot.target", "replace-irreversibly")]
