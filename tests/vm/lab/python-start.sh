#!/bin/sh
# Lab: what Python's start costs under TCG before restore-unit and
# restore-prepare do anything (docs/benchmarks.md): the interpreter alone,
# seamless-upgrade's command line, and the imports a restore needs, each
# timed from outside (three times), then each module's own import time.
# python3 -m tests.vm.vm lab tests/vm/lab/python-start.sh
python3 - <<'PY'
import subprocess, sys, time
RUNS = {
    "python3 -c pass": ["python3", "-c", "pass"],
    "python3 -S -c pass": ["python3", "-S", "-c", "pass"],
    "python3 -I -c pass": ["python3", "-I", "-c", "pass"],
    "import seamless_systemd.restore": ["python3", "-c", "import seamless_systemd.restore"],
    "import seamless_systemd.cli": ["python3", "-c", "import seamless_systemd.cli"],
    "seamless-upgrade --version": ["seamless-upgrade", "--version"],
    # Refused at once (not a restore boot): the whole start of restore-unit's command.
    "seamless-upgrade restore-unit x": ["seamless-upgrade", "restore-unit", "x.service"],
    "seamless-upgrade status": ["seamless-upgrade", "status"],
}
for name, argv in RUNS.items():
    times = []
    for _ in range(3):
        t0 = time.perf_counter()
        subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        times.append(time.perf_counter() - t0)
    print(f"{name:34} " + "  ".join(f"{t:5.2f} s" for t in times), flush=True)
PY
echo "--- importing seamless_systemd.cli: the modules with the most time of their own (us)"
python3 -X importtime -c 'import seamless_systemd.cli' 2>&1 | sort -t: -k2 -n | tail -25
