#!/usr/bin/python3
"""seamless-systemd test: take every free block of the root file system (/var is on it), as root can.

Run by seamless-var-filler.service in a restore boot the faults scenario asks
for, before the restore; the driver removes the file once it has looked.
"""

import json
import os

FILLER = "/var/lib/seamless-test/filler"


def main():
    st = os.statvfs(FILLER.rsplit("/", 1)[0])
    free = st.f_bfree * st.f_frsize
    fd = os.open(FILLER, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        size = free
        while size > 0:
            try:
                os.posix_fallocate(fd, 0, size)
                break
            except OSError:
                size -= 1 << 20
        # The last bits, 4 KiB at a time.
        for _ in range(1024):
            try:
                os.posix_fallocate(fd, 0, os.fstat(fd).st_size + 4096)
            except OSError:
                break
    finally:
        os.close(fd)
    after = os.statvfs(FILLER.rsplit("/", 1)[0]).f_bfree
    line = "SEAMLESS-TEST var-filled " + json.dumps(
        {"free_before": free, "filler": os.stat(FILLER).st_size, "free_blocks_after": after}
    )
    print(line, flush=True)
    with open("/dev/ttyS0", "w") as tty:
        tty.write(line + "\n")


main()
