"""`seamless-upgrade setup` on a guest booted by GRUB: the reservation, a reboot, an upgrade, --remove.

The guest boots from its own disk (SeaBIOS, then Debian's GRUB and its
grub.cfg) with no memmap= of its own. setup picks the range and writes
/etc/default/grub.d/seamless.cfg; update-grub puts it in grub.cfg; after one
ordinary reboot the kernel keeps that range as /dev/pmem0 and an upgrade
keeps the demos there. setup --remove takes it out; the next cold boot has no
reservation. See docs/setup.md.

In that last boot, the package's life: installed again over itself while an
upgrade is armed, removed, purged, with the demo services running throughout.
"""

from __future__ import annotations

import os
import re
from typing import Any

import pytest

from tests.vm import image as vmimage
from tests.vm import vm

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def setup_run() -> vm.Scenario:
    if os.geteuid() != 0:
        pytest.skip("the VM test builds its image with debootstrap and chroot: run it as root")
    img = vmimage.build_image("setup")
    return vm.run_scenario(img, vmimage.BUILD / "vm" / "setup", vm.GRUB_BOOT)


def test_setup_reserves_through_grub_and_remove_gives_it_back(setup_run: vm.Scenario) -> None:
    sc = setup_run
    first, setup = sc.get("setup-before"), sc.get("setup")
    assert first is not None and setup is not None, sc.console_tail()
    # A machine with nothing reserved, booted by GRUB.
    assert "memmap=" not in first["cmdline"] and not first["pmem"] and first["legacy"] == [], first
    assert first["cmdline"].startswith(f"BOOT_IMAGE=/boot/vmlinuz-{vmimage.KERNEL_A} "), first
    assert setup["rc"] == 0, setup
    # Where depends on where KASLR put this boot's kernel (kept 128 MiB away from): 4 GiB or 4.5 GiB here.
    m = re.search(r"Range: +(memmap=512M!\d+[MG]): 512M at (0x[0-9a-f]+)-(0x[0-9a-f]+)\n", setup["out"])
    assert m is not None, setup["out"]
    word, start = m.group(1), int(m.group(2), 16)
    size = int(m.group(3), 16) + 1 - start
    # 512 MiB, above 4 GiB (QEMU puts 1 GiB of the guest's 4 there), in grub.cfg; a second setup refused.
    assert size == 512 << 20 and start >= 4 << 30, setup["out"]
    assert "Reboot once" in setup["out"] and setup["grub"] == [word], setup
    assert word in (setup["dropin"] or ""), setup
    assert setup["again"][0] != 0 and "already set up" in setup["again"][1], setup["again"]

    # After one ordinary reboot: GRUB gave the kernel the word, the kernel made the range a PMEM.
    reserved = sc.get("reserved")
    assert reserved is not None, sc.console_tail()
    assert word in reserved["cmdline"].split() and reserved["pmem"], reserved
    assert reserved["legacy"] == [f"{start:x}-{start + size - 1:x} : Persistent Memory (legacy)"], reserved
    assert reserved["plan_rc"] == 0 and "memmap= reservation kept" in reserved["plan"], reserved["plan"]

    # The upgrade kept the demo in that PMEM.
    before, after = sc.get("before"), sc.get("after")
    assert before is not None and after is not None, sc.console_tail()
    assert after["uname"] == vmimage.KERNEL_B and word in after["cmdline"].split(), after
    b, a = before["7777"], after["states"]["7777"]
    assert a["state"]["counter"] == b["state"]["counter"] == 3, (b, a)
    assert a["state"]["blob_sha256"] == b["state"]["blob_sha256"]
    assert a["unit"]["MainPID"] == b["unit"]["MainPID"] and a["unit"]["fresh_starts"] == 0
    (rep,) = [u for u in after["report"]["units"] if u["unit"] == "seamless-demo@7777.service"]
    assert rep["outcome"] == "restored", rep

    # --remove: gone from grub.cfg; the next cold boot reserves nothing, the services start as usual.
    removed, last = sc.get("removed"), sc.get("unreserved")
    assert removed is not None and last is not None, sc.console_tail()
    assert removed["rc"] == 0 and "the RAM comes back at the next reboot" in removed["out"], removed
    assert removed["grub"] == [], removed
    assert "memmap=" not in last["cmdline"] and not last["pmem"] and last["legacy"] == [], last
    assert last["states"]["7777"]["state"]["counter"] == 0, last["states"]["7777"]


def same_services(before: dict[str, Any], now: dict[str, Any]) -> list[str]:
    """The demo services that are not the same processes with the same state as BEFORE."""
    return [
        port
        for port, b in before.items()
        if (now[port]["unit"]["MainPID"], now[port]["state"]) != (b["unit"]["MainPID"], b["state"])
    ]


def test_package_reinstalled_while_armed_removed_and_purged(setup_run: vm.Scenario) -> None:
    pkg = setup_run.get("package")
    assert pkg is not None, setup_run.console_tail()
    assert pkg["setup"][0] == 0 and pkg["arm"][0] == 0 and pkg["armed"], pkg
    before = pkg["states_before"]
    assert before["7777"]["state"]["counter"] == 2, before
    # dpkg -i over it while armed: the upgrade is cancelled (prerm), said so, nothing left held.
    rc, out = pkg["upgrade"]
    assert rc == 0 and "cancelling the armed kernel upgrade" in out, out
    assert pkg["after_upgrade"] == {"armed": None, "ram": None, "kexec_loaded": False}, pkg["after_upgrade"]
    # dpkg -r: the command and our units gone from systemd, no drop-in on the services,
    # the configuration, the reports and the reservation kept; every service the same process, same state.
    assert pkg["remove"][0] == 0, pkg["remove"]
    gone = pkg["after_remove"]
    assert not gone["command"] and gone["units"] == [] and gone["generated"] == [], gone
    assert set(gone["dropins"].values()) == {""}, gone["dropins"]
    assert gone["config"] and gone["state_dir"] and gone["grub_dropin"], gone
    assert same_services(before, gone["states"]) == [], (before, gone["states"])
    # dpkg -P: the configuration, the state and the GRUB drop-in (and its memmap= in grub.cfg) gone.
    assert pkg["purge"][0] == 0, pkg["purge"]
    purged = pkg["after_purge"]
    assert not purged["config"] and not purged["state_dir"], purged
    assert not purged["grub_dropin"] and purged["grub"] == [], purged
    assert same_services(before, purged["states"]) == [], (before, purged["states"])
    # The triggers of the three (run once, as apt would): the initramfs rebuilt, none of our files in it.
    rc, out = pkg["triggers"]
    assert rc == 0 and "update-initramfs: Generating" in out, out
    images = pkg["initramfs"]
    assert pkg["rebuilt"] and set(pkg["rebuilt"]) < set(images), (pkg["rebuilt"], images)
    for img, got in images.items():
        assert got["files"] > 100, (img, got)
        # The one not rebuilt still has our hook: what the check looks for is there to be seen.
        assert (got["ours"] == []) == (img in pkg["rebuilt"]), (img, got)
