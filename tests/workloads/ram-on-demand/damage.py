#!/usr/bin/python3
"""Test only: overwrite, below the file system, one block of seamless-keeper-b's memory image.

Runs in the boot after an on-demand upgrade, before seamless-restore.service
checks the images: it writes random bytes straight into the device-mapper
device over the pmem ranges, where ext4 keeps the first block of the unit's
largest pages-*.img (of the final dump or of a pre-dump round: the restore
reads them all). That unit must start afresh; the other must be restored.
"""

import json
import os
import re
import subprocess
from pathlib import Path

DEV = "/dev/mapper/seamless-images"
MOUNT = Path("/run/seamless/pmem")
UNIT = "seamless-keeper-b.service"

words = Path("/proc/cmdline").read_text().split()
gen = next(w.split("=", 1)[1] for w in words if w.startswith("seamless.restore="))
images = MOUNT / gen / "units" / UNIT / "images"
pages = max(images.rglob("pages-*.img"), key=lambda p: p.stat().st_size)
inner = "/" + str(pages.relative_to(MOUNT))


def physical(logical: int) -> int:
    """The device block behind the file's block LOGICAL (0: a hole, punched by CRIU's --auto-dedup)."""
    out = subprocess.run(["debugfs", "-R", f"bmap {inner} {logical}", DEV], capture_output=True, text=True)
    return int(re.findall(r"^\d+$", out.stdout, re.M)[0])


block = next(b for b in map(physical, range(pages.stat().st_size // 4096)) if b)
fd = os.open(DEV, os.O_WRONLY)
try:
    os.pwrite(fd, os.urandom(4096), block * 4096)
    os.fsync(fd)
finally:
    os.close(fd)
Path("/proc/sys/vm/drop_caches").write_text("3\n")
print(json.dumps({"damaged": str(pages), "block": block}))
with open("/dev/kmsg", "w") as k:
    k.write(f"seamless-ram-damage: overwrote block {block} of {DEV} ({pages})\n")
