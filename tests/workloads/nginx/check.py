#!/usr/bin/python3
"""before/after checks of the nginx workload.

check.py save    note nginx's master and worker PIDs, fetch the page
check.py verify  the same processes serve the same page; reload still works
"""

import http.client
import json
import subprocess
import sys
import time
from pathlib import Path

SAVED = Path("/var/lib/seamless-workload-nginx.json")


def fetch() -> str:
    conn = http.client.HTTPConnection("127.0.0.1", 80, timeout=10)
    conn.request("GET", "/")
    resp = conn.getresponse()
    body = resp.read().decode()
    assert resp.status == 200, resp.status
    return body


def processes() -> dict:
    main = subprocess.run(
        ["systemctl", "show", "-p", "MainPID", "--value", "nginx"], capture_output=True, text=True, check=True
    ).stdout.strip()
    out = subprocess.run(["pgrep", "-x", "nginx"], capture_output=True, text=True).stdout.split()
    return {"main": int(main), "all": sorted(int(p) for p in out)}


if sys.argv[1] == "save":
    state = {"page": fetch(), **processes()}
    SAVED.write_text(json.dumps(state))
    print(f"nginx: master {state['main']}, processes {state['all']}")
else:
    saved = json.loads(SAVED.read_text())
    now = {"page": fetch(), **processes()}
    print(f"before: master {saved['main']}, processes {saved['all']}")
    print(f"after:  master {now['main']}, processes {now['all']}")
    assert now == saved, "nginx is not the same"
    subprocess.run(["systemctl", "reload", "nginx"], check=True)
    time.sleep(2)
    print(f"after reload: {processes()['all']} serving: {fetch().strip()}")
    print("nginx kept its processes and serves the same page")
