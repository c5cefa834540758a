#!/usr/bin/python3
"""before/after checks of the nodejs workload.

check.py save    a few requests; note the token, counter and PID
check.py verify  the same process answers with the same token, its counter goes on and
                 its event loop's timer kept ticking
"""

import json
import sys
import time
import urllib.request
from pathlib import Path

SAVED = Path("/var/lib/seamless-workload-nodejs.json")


def get() -> dict:
    with urllib.request.urlopen("http://127.0.0.1:7804/", timeout=10) as r:
        return json.loads(r.read())


if sys.argv[1] == "save":
    for _ in range(4):
        st = get()
    SAVED.write_text(json.dumps(st))
    print(f"node: {st}")
else:
    saved = json.loads(SAVED.read_text())
    first = get()
    time.sleep(1)
    now = get()
    print(f"before: {saved}")
    print(f"after:  {now}")
    assert (now["token"], now["pid"]) == (saved["token"], saved["pid"]), "a different node process"
    assert first["counter"] == saved["counter"] + 1 and now["entries"] == saved["entries"] + 2
    assert now["ticks"] > first["ticks"] >= saved["ticks"], "the event loop's timer stopped"
    print("node kept its process, its token, its map and its ticking timer")
