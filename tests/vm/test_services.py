"""Debian's own services, their units as shipped, across one seamless upgrade (tests/vm/services.py).

Each workload's after.sh checks what only the running process holds (redis'
run_id and a volatile key, apache's scoreboard, php-fpm's pool counters,
haproxy's request counter, a MariaDB MEMORY table, memcached's items,
PostgreSQL's start time and shared_buffers; for the
hardened services of tests/workloads/hardening, their whole sandbox as /proc
and the cgroup show it, and what the process itself can read and write).
"""

from __future__ import annotations

import os
from typing import Any

import pytest

from tests.vm import image as vmimage
from tests.vm import services

pytestmark = pytest.mark.integration

KEPT = [
    ("redis", "redis-server.service"),
    ("memcached", "memcached.service"),
    ("apache2", "apache2.service"),
    ("php-fpm", "php8.2-fpm.service"),
    ("haproxy", "haproxy.service"),
    ("mariadb", "mariadb.service"),
    ("prometheus", "prometheus.service"),
    ("nodejs", "seamless-node.service"),
    ("tomcat10", "tomcat10.service"),
    ("unbound", "unbound.service"),
    ("openssh", "ssh.service"),
    ("hardening", "seamless-harden-strict.service"),
    ("hardening", "seamless-harden-full.service"),
    ("hardening", "seamless-harden-yes.service"),
    ("postgresql", "postgresql@15-main.service"),
]


@pytest.fixture(scope="module")
def report() -> dict[str, Any]:
    if os.geteuid() != 0:
        pytest.skip("the VM test builds its image with debootstrap and chroot: run it as root")
    _, rep = services.run()
    if not rep:
        pytest.fail(f"the services run wrote no report (console: {services.OUT})")
    (vmimage.BUILD / "services.md").write_text(services.table(rep))
    return rep


def unit(rep: dict[str, Any], name: str) -> dict[str, Any]:
    return next(u for u in rep["units"] if u["unit"] == name)


def test_the_kernel_changed(report: dict[str, Any]) -> None:
    assert report["kernel"] == {"from": vmimage.KERNEL_A, "to": vmimage.KERNEL_B}


def test_every_before_script_ran(report: dict[str, Any]) -> None:
    scripts = report["workload"]["scripts"]
    for name in services.NAMES:
        assert scripts[f"{name}/before.sh"]["rc"] == 0, scripts[f"{name}/before.sh"]


@pytest.mark.parametrize(("name", "unit_name"), KEPT)
def test_service_kept_its_running_state(report: dict[str, Any], name: str, unit_name: str) -> None:
    u = unit(report, unit_name)
    assert u["outcome"] == "restored", u
    assert u["main_pid_before"] == u["main_pid_after"], u
    after = report["workload"]["scripts"][f"{name}/after.sh"]
    if name == "postgresql" and after["rc"] != 0 and _bgwriter_crash(after["tail"]):
        # A known, open bug (docs/services.md): in some runs the restored background
        # writer reads zeros where the shared memory's PGPROC array and PROC_HDR are, and
        # crashes in LWLockQueueSelf; the postmaster (kept) recovers and restarts it.
        # Only that signature is let through: any other failure of the check fails.
        pytest.xfail("known: PostgreSQL's background writer crashed after the restore")
    assert after["rc"] == 0, after  # the same process, with its in-memory state


def _bgwriter_crash(tail: list[str]) -> bool:
    """The check's output shows the background writer's segfault and PostgreSQL's crash recovery."""
    text = "\n".join(tail)
    return "segfault at 60 " in text and "postgres[" in text and "redo done" in text
