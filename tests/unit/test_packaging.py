"""The RPM (packaging/rpm) builds and carries what a Fedora or RHEL machine needs, the dracut module first."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.skipif(
    shutil.which("rpmbuild") is None, reason="rpmbuild is missing (tests/vm/host-deps.sh installs it)"
)
def test_rpm_builds_with_the_dracut_module(tmp_path: Path) -> None:
    subprocess.run(
        [str(REPO / "packaging/rpm/build.sh"), str(tmp_path)], check=True, capture_output=True, cwd=REPO
    )
    (rpm,) = (tmp_path / "RPMS/noarch").glob("seamless-systemd-*.noarch.rpm")
    files = set(
        subprocess.run(["rpm", "-qlp", str(rpm)], check=True, capture_output=True, text=True).stdout.split()
    )
    for path in (
        "/usr/bin/seamless-upgrade",
        "/usr/lib/dracut/modules.d/90seamless/module-setup.sh",
        "/usr/lib/dracut/modules.d/90seamless/seamless-pid-base.sh",
        "/usr/lib/seamless-systemd/initrd/seamless-pid-base",
        "/usr/lib/seamless-systemd/initrd/seamless-mount-images",
        "/usr/lib/systemd/system-generators/seamless-generator",
        "/usr/lib/systemd/system/seamless-checkpoint@.service",
        "/usr/lib/systemd/system/kexec-upgrade.target",
        "/usr/libexec/seamless-systemd/criu-action",
        "/etc/seamless/config.yaml",
        "/usr/lib/kernel/install.d/90-seamless.install",
        "/usr/lib/systemd/catalog/seamless-systemd.catalog",
        "/usr/share/man/man5/seamless.yaml.5",
        "/usr/share/man/man7/kexec-upgrade.target.7",
        "/usr/share/bash-completion/completions/seamless-upgrade",
        "/usr/lib/systemd/system/seamless-dbus.service",
        "/usr/share/dbus-1/system-services/org.seamlesssystemd.Upgrade1.service",
        "/usr/share/polkit-1/actions/org.seamlesssystemd.upgrade.policy",
    ):
        assert path in files, path
    assert any(f.endswith("/seamless_systemd/restore.py") for f in files)
    config = subprocess.run(
        ["rpm", "-qcp", str(rpm)], check=True, capture_output=True, text=True
    ).stdout.split()
    assert config == ["/etc/seamless/config.yaml"]  # kept on upgrade (noreplace)
    requires = subprocess.run(["rpm", "-qRp", str(rpm)], check=True, capture_output=True, text=True).stdout
    assert "dracut" in requires and "criu" in requires and "kexec-tools" in requires


@pytest.mark.skipif(
    shutil.which("lintian") is None or shutil.which("dpkg-buildpackage") is None,
    reason="lintian or dpkg-buildpackage is missing (tests/vm/host-deps.sh installs them)",
)
def test_the_deb_is_lintian_clean(tmp_path: Path) -> None:
    """Not a tag, down to the pedantic ones; the overrides say why each is as it is."""
    from tests.vm import image

    deb = image.build_deb(tmp_path)
    out = subprocess.run(
        ["lintian", "--info", "--pedantic", str(deb)], capture_output=True, text=True, check=False
    )
    tags = [line for line in out.stdout.splitlines() if line[:2] in ("E:", "W:", "I:", "P:", "X:")]
    assert out.returncode == 0 and not tags, out.stdout + out.stderr
    listed = subprocess.run(["dpkg-deb", "-c", str(deb)], capture_output=True, text=True, check=True).stdout
    for path in (
        "./etc/kernel/postinst.d/seamless-systemd",
        "./usr/lib/systemd/catalog/seamless-systemd.catalog",
        "./usr/share/dbus-1/system-services/org.seamlesssystemd.Upgrade1.service",
        "./usr/share/polkit-1/actions/org.seamlesssystemd.upgrade.policy",
        "./usr/share/bash-completion/completions/seamless-upgrade",
        "./usr/share/man/man5/seamless.yaml.5.gz",
    ):
        assert path in listed, path
