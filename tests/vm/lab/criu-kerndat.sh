#!/bin/sh
# Lab: what CRIU's probe of the kernel (kerndat) costs under TCG. A boot after
# a kexec has an empty /run, so the first criu of the boot (a unit's restore)
# probes the kernel before it does anything else, and keeps what it found in
# /run/criu.kdat for the next ones. Timed from outside, three times each:
# criu check of one feature without the cache, then again with it.
# python3 -m tests.vm.vm lab tests/vm/lab/criu-kerndat.sh
python3 - <<'PY'
import os, subprocess, time
from seamless_systemd import criu
CACHES = [str(p) for p in criu.KERNDAT_CACHES]
argv = [criu.CRIU, "check", "--feature", "mem_dirty_track"]
for _ in range(3):
    for c in CACHES:
        try:
            os.unlink(c)
        except FileNotFoundError:
            pass
    t0 = time.perf_counter()
    a = subprocess.run(argv, capture_output=True, text=True)
    t1 = time.perf_counter()
    b = subprocess.run(argv, capture_output=True, text=True)
    t2 = time.perf_counter()
    kept = [c for c in CACHES if os.path.exists(c)]
    print(f"no cache: {t1 - t0:5.2f} s (rc {a.returncode}); cached: {t2 - t1:5.2f} s (rc {b.returncode}); kept: {kept}")
    print("  ", (a.stdout + a.stderr).strip().splitlines()[-1:])
PY
