"""One run of the full VM scenario serves every VM test module."""

from __future__ import annotations

import os
import shutil
from typing import Any

import pytest

from tests.vm import image as vmimage
from tests.vm import vm


def scenario_image(name: str) -> vmimage.Image:
    """The image of scenario NAME, or a skip (not root) or a failure (a tool missing) that says why."""
    if os.geteuid() != 0:
        pytest.skip("the VM test builds its image with debootstrap and chroot: run it as root")
    for tool in ("qemu-system-x86_64", "debootstrap", "dpkg-buildpackage"):
        if shutil.which(tool) is None:
            pytest.fail(f"{tool} is missing: run tests/vm/host-deps.sh (make test does)")
    return vmimage.build_image(name)


@pytest.fixture(scope="session")
def scenario() -> vm.Scenario:
    return vm.run_scenario(scenario_image("full"), vmimage.BUILD / "vm" / "run", vm.FULL)


def need(sc: vm.Scenario, event: str) -> dict[str, Any]:
    """The data of EVENT, or a failure that shows what the guest did."""
    data = sc.get(event)
    if data is None:
        errors = [e.data for e in sc.events if e.name in ("error", "timeout")]
        pytest.fail(f"the guest never reported '{event}' (errors: {errors})\n{sc.console_tail()}")
    return data
