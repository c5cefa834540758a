#!/usr/bin/python3
"""A test service whose clients keep their TCP connection open.

    chat.py PORT

Listens on 0.0.0.0:PORT. Each line a client sends gets one line of JSON back:
'INC' adds one to the shared counter first. The reply says how many lines
this connection has carried, so a client sees whether it is still talking to
the same connection state. A new connection that sends 'STATE' gets the list
of open connections instead (for the test driver).
"""

import hashlib
import json
import os
import sys
import threading
import time

from lines import listen_tcp

port = int(sys.argv[1])
lock = threading.Lock()
blob = os.urandom(1 << 20)
state = {
    "counter": 0,
    "started_at": time.time(),
    "main_pid": os.getpid(),
    "blob_sha256": hashlib.sha256(blob).hexdigest(),
}
conns: dict[str, int] = {}  # peer -> lines


def serve(conn, peer):
    name = f"{peer[0]}:{peer[1]}"
    with conn, conn.makefile("rwb", buffering=0) as f:
        for raw in f:
            cmd = raw.decode(errors="replace").strip()
            if cmd == "STATE":
                with lock:
                    reply = dict(state, connections=dict(conns), kernel=os.uname().release)
                f.write(json.dumps(reply).encode() + b"\n")
                return
            with lock:
                if cmd == "INC":
                    state["counter"] += 1
                conns[name] = conns.get(name, 0) + 1
                reply = dict(state, lines=conns[name], peer=name, kernel=os.uname().release, pid=os.getpid())
            f.write(json.dumps(reply).encode() + b"\n")
            print(f"{name}: {cmd} -> counter={reply['counter']}", flush=True)
    with lock:
        conns.pop(name, None)


srv = listen_tcp("0.0.0.0", port)
print(f"starting fresh: pid {os.getpid()}", flush=True)
while True:
    c, peer = srv.accept()
    threading.Thread(target=serve, args=(c, peer), daemon=True).start()
