#!/usr/bin/python3
"""A service whose only state is MiB of random bytes in its memory.

keeper.py PORT MIB  answers on 127.0.0.1:PORT, one line per connection:
  SUM  {"pid", "bytes", "sha256"} of the bytes it holds
"""

import hashlib
import json
import os
import socket
import sys

port, mib = int(sys.argv[1]), int(sys.argv[2])
state = bytearray(os.urandom(mib << 20))
srv = socket.create_server(("127.0.0.1", port))
while True:
    conn, _ = srv.accept()
    with conn:
        if conn.makefile().readline().strip() == "SUM":
            digest = hashlib.sha256(state).hexdigest()
            reply = {"pid": os.getpid(), "bytes": len(state), "sha256": digest}
            conn.sendall((json.dumps(reply) + "\n").encode())
