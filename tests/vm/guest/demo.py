#!/usr/bin/python3
"""A demo service whose state lives only in its memory.

At start it draws a random 1 MiB blob and sets a counter to 0. Over TCP on
HOST:PORT (127.0.0.1:7777 unless given) it answers 'GET' with its state and 'INC' by adding one to the
counter first. It logs to stdout, i.e. to the journal. A restart cannot fake
the state: the blob would differ.
"""

import hashlib
import os
import sys
import time
from pathlib import Path

from lines import answer_forever, listen_tcp

port = int(sys.argv[1]) if len(sys.argv) > 1 else 7777
host = sys.argv[2] if len(sys.argv) > 2 else "127.0.0.1"
blob = os.urandom(1 << 20)
state = {
    "counter": 0,
    "blob_sha256": hashlib.sha256(blob).hexdigest(),
    "started_at": time.time(),
    "start_boot_id": Path("/proc/sys/kernel/random/boot_id").read_text().strip(),
}
print(f"starting fresh: blob {state['blob_sha256'][:16]}", flush=True)


def reply(cmd):
    if cmd == "INC":
        state["counter"] += 1
    print(f"{cmd or 'EMPTY'}: counter={state['counter']}", flush=True)
    return dict(state, pid=os.getpid(), kernel=os.uname().release)


answer_forever(listen_tcp(host, port, 8), reply)
