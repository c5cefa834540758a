"""The shipped unit files pass `systemd-analyze verify` and keep the house rules."""

import configparser
import os
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
UNITS = sorted((REPO / "units").iterdir())


def parse(path: Path) -> configparser.RawConfigParser:
    cp = configparser.RawConfigParser(strict=False, interpolation=None)
    cp.optionxform = str  # type: ignore[assignment,method-assign]
    cp.read(path)
    return cp


@pytest.mark.parametrize("unit", UNITS, ids=lambda p: p.name)
def test_unit_has_description_documentation_and_off_switch(unit: Path) -> None:
    cp = parse(unit)
    assert cp.get("Unit", "Description", fallback="")
    assert cp.get("Unit", "Documentation", fallback="")
    text = unit.read_text()
    if unit.suffix == ".service":
        assert "ConditionPathExists=!/etc/seamless/disabled" in text
        assert "ConditionKernelCommandLine=!seamless=off" in text


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed")
def test_systemd_analyze_verify(tmp_path: Path) -> None:
    unit_dir = tmp_path / "usr/lib/systemd/system"
    unit_dir.mkdir(parents=True)
    # The units refer to systemd's own targets; take them from the host.
    for p in Path("/lib/systemd/system").iterdir():
        if p.is_file() and not p.is_symlink():
            shutil.copy(p, unit_dir / p.name)
    for p in UNITS:
        shutil.copy(p, unit_dir / p.name)
    for exe in ("usr/bin/seamless-upgrade", "bin/true"):
        (tmp_path / exe).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / exe).write_text("#!/bin/sh\n")
        (tmp_path / exe).chmod(0o755)
    names = [p.name for p in UNITS if "@" not in p.name] + ["seamless-checkpoint@foo.service.service"]
    proc = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", f"--root={tmp_path}", *names],
        capture_output=True,
        text=True,
        env=dict(os.environ, SYSTEMD_LOG_LEVEL="notice"),
        check=False,
    )
    assert proc.returncode == 0 and not proc.stderr.strip(), proc.stderr
