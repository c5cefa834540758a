#!/bin/sh
# Lab: RAM on demand in A (docs/ram-on-demand.md), on the guest's real kernel:
# hugetlb pages taken at run time, served as /dev/nbd0 by seamless_systemd.nbd,
# ext4 on it, files written, read back after a remount, then given back.
# python3 -m tests.vm.vm lab tests/vm/lab/ram-on-demand.sh
modprobe nbd nbds_max=2 || exit 1
grep -E "MemTotal|MemFree|MemAvailable|HugePages_Total" /proc/meminfo
exec python3 - <<'PY'
import hashlib, os, subprocess, time, mmap
from pathlib import Path
from seamless_systemd import hugemem, nbd

MIB = 1 << 20
t0 = time.monotonic()
def step(what):
    print(f"{time.monotonic() - t0:7.2f} s  {what}", flush=True)

with hugemem.hugetlbfs(Path("/run/seamless-lab-huge"), 2 * MIB) as d:
    taken = hugemem.take(d, 256 * MIB, 2 * MIB)
    step(f"took {taken.size >> 20} MiB in {len(taken.ranges)} range(s): {hugemem.memmap_arg(taken.ranges)[:200]}")
    fd = os.open(taken.path, os.O_RDWR)
    mem = mmap.mmap(fd, taken.size, mmap.MAP_SHARED)
    dev = nbd.Device("/dev/nbd0", nbd.Store(mem, taken.page, taken.layout()))
    step("nbd0 attached")
    subprocess.run(["mkfs.ext4", "-q", "-F", "-O", "^has_journal", "-L", "seamless-lab", "/dev/nbd0"], check=True)
    step("mkfs.ext4 done")
    os.makedirs("/mnt/lab", exist_ok=True)
    subprocess.run(["mount", "/dev/nbd0", "/mnt/lab"], check=True)
    blob = os.urandom(128 * MIB)
    with open("/mnt/lab/blob", "wb") as f:
        f.write(blob)
        f.flush()
        os.fsync(f.fileno())
    step("wrote 128 MiB, fsync")
    subprocess.run(["umount", "/mnt/lab"], check=True)
    subprocess.run(["sh", "-c", "echo 3 > /proc/sys/vm/drop_caches"], check=True)
    subprocess.run(["mount", "-o", "ro", "/dev/nbd0", "/mnt/lab"], check=True)
    same = hashlib.sha256(Path("/mnt/lab/blob").read_bytes()).digest() == hashlib.sha256(blob).digest()
    step(f"remounted, read 128 MiB back: {'same bytes' if same else 'DIFFERENT'}")
    subprocess.run(["umount", "/mnt/lab"], check=True)
    dev.close()
    mem.close()
    os.close(fd)
    step("nbd0 detached")
    hugemem.give_back(taken)
    step("given back")
PY
