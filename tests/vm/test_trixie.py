"""The demo upgrade on Debian 13 (trixie): systemd 257, kernels 6.12, Debian's own CRIU 4.1.1.

The same package (built here from packaging/) installed on the other stable
release the project supports; three demo services kept across a kexec from
6.12.107 to 6.12.117. The full scenario, the services and the faults run on
Debian 12 only (docs/testing.md says why).
"""

from __future__ import annotations

import os

import pytest

from tests.vm import image as vmimage
from tests.vm import vm

pytestmark = pytest.mark.integration


def test_demo_upgrade_on_trixie() -> None:
    if os.geteuid() != 0:
        pytest.skip("the VM test builds its image with debootstrap and chroot: run it as root")
    rel = vmimage.TRIXIE
    img = vmimage.build_image("demo", release=rel)
    sc = vm.run_scenario(img, vmimage.BUILD / "vm" / "trixie", vm.TRIXIE_MACHINE)
    boots = [e.data for e in sc.events if e.name == "boot"]
    before, after = sc.get("before"), sc.get("after")
    assert before is not None and after is not None, sc.console_tail()
    # Debian 13 with its systemd, booted into A, upgraded to B.
    assert boots[0]["os"].startswith("13."), boots[0]
    assert boots[0]["systemd"].startswith("systemd 257 "), boots[0]
    assert [b["kernel"] for b in boots[:2]] == [rel.kernel_a, rel.kernel_b], boots
    assert after["uname"] == rel.kernel_b
    rep = after["report"]
    assert rep["kernel"] == {"from": rel.kernel_a, "to": rel.kernel_b}, rep
    for port in ("7777", "7778", "7779"):
        b, a = before[port], after["states"][port]
        assert (a["state"]["counter"], a["state"]["blob_sha256"]) == (
            b["state"]["counter"],
            b["state"]["blob_sha256"],
        ), port
        assert a["unit"]["MainPID"] == b["unit"]["MainPID"] and a["unit"]["fresh_starts"] == 0, (port, a)
    assert {u["unit"]: u["outcome"] for u in rep["units"]} == {
        f"seamless-demo@{p}.service": "restored" for p in (7777, 7778, 7779)
    }, rep["units"]
