"""The kernel install hooks: what they say about a new kernel, and that they never fail its installation."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from seamless_systemd import kernels as kmod
from seamless_systemd import newkernel, state

REPO = Path(__file__).resolve().parents[2]
HOOKS = {
    "debian": (
        REPO / "kernel-hooks/postinst.d-seamless-systemd",
        ["6.1.0-53-cloud-amd64", "/boot/vmlinuz-x"],
    ),
    "kernel-install": (
        REPO / "kernel-hooks/90-seamless.install",
        ["add", "6.1.0-53-cloud-amd64", "/efi/x", "k"],
    ),
}


def fake_tool(bin_dir: Path, rc: int) -> Path:
    """A seamless-upgrade that notes its arguments and exits RC (the hook's side, not ours, is tested)."""
    bin_dir.mkdir(exist_ok=True)
    said = bin_dir / "said"
    tool = bin_dir / "seamless-upgrade"
    tool.write_text(f'#!/bin/sh\necho "$@" >> {said}\nexit {rc}\n')
    tool.chmod(0o755)
    return said


@pytest.mark.parametrize("kind", sorted(HOOKS))
def test_the_hook_asks_about_the_new_kernel_and_never_fails(kind: str, tmp_path: Path) -> None:
    hook, args = HOOKS[kind]
    said = fake_tool(tmp_path / "bin", rc=1)
    env = {**os.environ, "PATH": f"{tmp_path / 'bin'}:/usr/bin:/bin"}
    assert subprocess.run([str(hook), *args], env=env, check=False).returncode == 0
    assert said.read_text() == "kernel-installed 6.1.0-53-cloud-amd64\n"
    # Left behind by a removed package: no tool, no complaint.
    assert subprocess.run([str(hook), *args], env={"PATH": "/usr/bin:/bin"}, check=False).returncode == 0


def test_kernel_install_checks_on_add_only(tmp_path: Path) -> None:
    said = fake_tool(tmp_path / "bin", rc=0)
    env = {**os.environ, "PATH": f"{tmp_path / 'bin'}:/usr/bin:/bin"}
    hook = HOOKS["kernel-install"][0]
    subprocess.run([str(hook), "remove", "6.1.0-47-cloud-amd64"], env=env, check=True)
    assert not said.exists()


def test_what_the_installer_reads() -> None:
    ready = {"version": "6.1.0-53", "ready": True, "units": ["db.service", "web.service"], "problems": []}
    assert newkernel.say(ready) == (
        "kernel 6.1.0-53 is installed: 'seamless-upgrade run' switches to it, keeping 2 service(s): "
        "db.service, web.service"
    )
    refused = {"version": "6.1.0-53", "ready": False, "units": [], "problems": ["a", "b"]}
    assert newkernel.say(refused).endswith("a seamless switch to it would be refused: a; b")


def test_a_bad_configuration_is_the_answer_not_a_failure(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc" / "config.yaml").write_text("units: 3\n")
    monkeypatch.setattr(newkernel, "RECORDS", tmp_path / "kernels")
    monkeypatch.setattr(newkernel.journal, "SOCKET", tmp_path / "no-journal")
    assert newkernel.installed("6.1.0-53-cloud-amd64", tmp_path / "etc") == 0
    out = capsys.readouterr().out
    assert out.startswith("seamless-systemd: kernel 6.1.0-53-cloud-amd64 is installed, but a seamless switch")
    assert "could not be checked" in out and "units" in out
    kept = state.read_json(tmp_path / "kernels" / "6.1.0-53-cloud-amd64.json")
    assert kept["ready"] is False and kept["version"] == "6.1.0-53-cloud-amd64"
    # Not a version: nothing is written where the name would point.
    assert newkernel.installed("../../etc/passwd", tmp_path / "etc") == 0
    assert sorted(p.name for p in (tmp_path / "kernels").iterdir()) == ["6.1.0-53-cloud-amd64.json"]


def test_status_shows_installed_kernels_newer_than_the_running_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    records = tmp_path / "kernels"
    for version in ("6.1.0-40", "6.1.0-53", "6.1.0-60"):
        state.write_json(records / f"{version}.json", {"version": version, "ready": True})
    (records / "garbled.json").write_text("{")
    installed = [
        kmod.Kernel(v, Path(f"/boot/vmlinuz-{v}"), None) for v in ("6.1.0-40", "6.1.0-47", "6.1.0-53")
    ]
    monkeypatch.setattr(newkernel.kernels, "installed", lambda: installed)
    monkeypatch.setattr(
        newkernel.os, "uname", lambda: os.uname_result(("Linux", "h", "6.1.0-47", "#1", "x86_64"))
    )
    # 6.1.0-40 is older, 6.1.0-60 was removed since.
    assert [v["version"] for v in newkernel.pending(records)] == ["6.1.0-53"]
