#!/usr/bin/python3
"""A service that writes to disk all the time: numbered lines appended to a log, each fsync'ed.

It also holds a data file open (read once at start). Over TCP on
127.0.0.1:7796 it answers with its state: how far the log is fsync'ed
('synced'), its PID, what the data file said. Started afresh, it goes on
from the last number in its log. After any power cut the log must hold every
line up to the last 'synced' a client was told.
"""

import os
import threading
import time

from lines import answer_forever, listen_tcp

DIR = "/var/lib/seamless-writer"
os.makedirs(DIR, exist_ok=True)
if not os.path.exists(f"{DIR}/data"):
    with open(f"{DIR}/data", "w") as f:
        f.write("settings v1\n")
data = open(f"{DIR}/data")  # noqa: SIM115 - held open for the life of the service
settings = data.readline().strip()
log = open(f"{DIR}/log", "a+")  # noqa: SIM115
log.seek(0)
text = log.read()
numbers = [int(x) for x in text.split("\n") if x.isdigit()]
if text and not text.endswith("\n"):
    log.write("\n")  # a line torn by a power cut stays as it is
state = {"synced": max(numbers, default=0), "settings": settings, "started_at": time.time()}
print(f"starting fresh: the log holds up to {state['synced']}", flush=True)


def write_forever():
    n = state["synced"]
    while True:
        n += 1
        log.write(f"{n}\n")
        log.flush()
        os.fsync(log.fileno())
        state["synced"] = n
        time.sleep(0.2)


threading.Thread(target=write_forever, daemon=True).start()
answer_forever(listen_tcp("127.0.0.1", 7796, 8), lambda cmd: dict(state, pid=os.getpid()))
