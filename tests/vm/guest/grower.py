"""seamless-systemd test: a service that grows by MIB MiB on each SIGUSR1 (the images outgrow the PMEM).

Usage: grower.py MIB. Its memory is written (not just reserved), so CRIU has to dump every page of it.
"""

import signal
import sys
import time

held = []


def grow(signum, frame):
    held.append(b"\x5a" * (int(sys.argv[1]) << 20))
    print(f"grew to {sum(map(len, held)) >> 20} MiB", flush=True)


signal.signal(signal.SIGUSR1, grow)
print("starting fresh", flush=True)
while True:
    time.sleep(3600)
