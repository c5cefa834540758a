"""make test's quick benchmark, smallest state: the floor (a), seamless (b), images on the disk (c).

The full matrix is make bench (tests/vm/bench.py, docs/benchmarks.md); this
keeps it from rotting and checks what the benchmark claims to measure: a
client outside the guest saw the service go away and come back, the kept
service came back as the same instance with every block of its state right,
the floor's service did not (nothing was kept), the service kept with its
images on the disk (pmem.mode: disk) came back the same way (the only VM test
of that mode), and that the kept service's page cache was read back after the
kexec. Each run goes from the kernel the one before brought, so (c) starts
the service (b) restored again in the boot that restored it: its port must
be free at once. The cold reboot (d) is left to make bench: it is the benchmark's own
machinery, not the product's, and cost make test two minutes.
"""

from __future__ import annotations

import json
import os

import pytest

from tests.vm import bench
from tests.vm import image as vmimage

pytestmark = pytest.mark.integration


def test_quick_benchmark() -> None:
    if os.geteuid() != 0:
        pytest.skip("the VM test builds its image with debootstrap and chroot: run it as root")
    out = vmimage.BUILD / "bench-quick"
    rc = bench.main(["--sizes", "64", "--scenarios", "a,b,c", "--reps", "1", "--out", str(out), "--no-docs"])
    results = json.loads((out / "results.json").read_text())
    assert results["done"] and not results["errors"], results["errors"]
    floor, seamless, disk = results["runs"]
    # The service restored by (b) is stopped and started again for (c) in the boot that
    # restored it: its port is free at once (its restored connections keep SO_REUSEADDR).
    assert disk["port_busy"] is None, disk["port_busy"]
    # Each run switches to the other kernel: A -> B, B -> A, A -> B.
    kernels = (vmimage.KERNEL_A, vmimage.KERNEL_B)
    for run, (before, to) in zip((floor, seamless, disk), (kernels, kernels[::-1], kernels), strict=True):
        assert (run["kernel_before"], run["kernel_to"], run["kernel_after"]) == (before, to, to), run
        assert run["client"]["seconds"] and run["client"]["seconds"] > 0, run["client"]
    for run, images in ((seamless, "reserved"), (disk, "disk")):
        assert run["kept"] is True, run
        assert run["full_state"]["blocks"] == 64 and run["full_state"]["bad"] == 0, run["full_state"]
        assert run["guest"]["images"] == images, run["guest"]
    # pmem.mode: disk takes its images off the disk once they are used.
    assert disk["guest"]["images_left_on_disk"] == [], disk["guest"]
    # The file systems were clean at the kexec: no journal replayed in the new boot.
    assert not seamless["fs_recovery"] and not floor["fs_recovery"], seamless["marks"]
    # Plan's estimate of the images is what CRIU wrote, within 10 %.
    assert 0.9 <= seamless["estimate"]["ratio"] <= 1.1, seamless["estimate"]
    # The page cache: the probe's file was noted at the checkpoint and read back after the kexec.
    probed = (
        (floor, ("before", "right_after")),
        (seamless, ("before", "right_after", "settled")),
    )
    for run, whens in probed:
        for when in whens:
            assert run["page_cache"].get(when, {}).get("n") == bench.CACHE_READS, (when, run["page_cache"])
    warmed = (seamless["guest"]["warm"] or {}).get("page_cache") or {}
    # What the re-warm read, with what it found already resident (the prober's reads after the kexec,
    # the restores' libraries), covers the probe's 256 MiB file.
    back = warmed.get("read_bytes", 0) + warmed.get("already_cached_bytes", 0)
    assert back >= 256 << 20, seamless["guest"]["warm"]
    assert floor["kept"] is False
    (row_a, row_b, row_c) = sorted(results["summary"], key=lambda r: r["scenario"])
    print(
        f"quick benchmark: (a) {row_a['downtime_median']} s, (b) {row_b['downtime_median']} s "
        f"(ratio {row_b['ratio_to_a']}), (c) {row_c['downtime_median']} s (ratio {row_c['ratio_to_a']})"
    )
    assert rc == 0
