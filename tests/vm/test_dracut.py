"""The demo upgrade with initramfs images made by dracut (the dracut module instead of initramfs-tools)."""

from __future__ import annotations

import os

import pytest

from tests.vm import image as vmimage
from tests.vm import vm

pytestmark = pytest.mark.integration


def test_upgrade_with_dracut_initramfs() -> None:
    if os.geteuid() != 0:
        pytest.skip("the VM test builds its image with debootstrap and chroot: run it as root")
    img = vmimage.build_image("dracut")
    sc = vm.run_scenario(img, vmimage.BUILD / "vm" / "dracut")
    boots = [e.data for e in sc.events if e.name == "boot"]
    before, after = sc.get("before"), sc.get("after")
    assert before is not None and after is not None, sc.console_tail()
    # Both boots ran our dracut hooks: the PID base was set before the services started.
    assert len(boots) >= 2 and all(b["initramfs"] == "dracut" for b in boots[:2]), boots
    assert all(int(b["pid_base"]) >= 4096 for b in boots[:2]), boots
    assert after["uname"] == vmimage.KERNEL_B
    b, a = before["7777"], after["states"]["7777"]
    assert (a["state"]["counter"], a["state"]["blob_sha256"]) == (
        b["state"]["counter"],
        b["state"]["blob_sha256"],
    )
    assert a["unit"]["MainPID"] == b["unit"]["MainPID"] and a["unit"]["fresh_starts"] == 0
    (rep,) = [u for u in after["report"]["units"] if u["unit"] == "seamless-demo@7777.service"]
    assert rep["outcome"] == "restored", rep
