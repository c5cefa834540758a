"""make demo WORKLOAD=DIR, with the example workload: Debian's nginx across the upgrade."""

from __future__ import annotations

import json
import os
import shutil

import pytest

from tests.vm import image as vmimage
from tests.vm import vm

pytestmark = pytest.mark.integration

NGINX = vmimage.REPO / "tests/workloads/nginx"


def test_nginx_workload_survives_the_upgrade() -> None:
    if os.geteuid() != 0:
        pytest.skip("the VM test builds its image with debootstrap and chroot: run it as root")
    out = vmimage.BUILD / "demo-nginx"
    shutil.rmtree(out, ignore_errors=True)
    rc = vm.demo(out, [NGINX])
    rep = json.loads((out / "report.json").read_text())
    scripts = rep["workload"]["scripts"]
    assert scripts["nginx/before.sh"]["rc"] == 0, scripts["nginx/before.sh"]
    assert scripts["nginx/after.sh"]["rc"] == 0, scripts[
        "nginx/after.sh"
    ]  # same master/workers, same page, reload works
    (nginx,) = rep["units"]
    assert nginx["unit"] == "nginx.service" and nginx["outcome"] == "restored", nginx
    assert nginx["main_pid_before"] == nginx["main_pid_after"]
    assert nginx["state_ok"] is True
    assert rep["kernel"] == {"from": vmimage.KERNEL_A, "to": vmimage.KERNEL_B}
    assert rc == 0
