#!/usr/bin/python3
"""before/after checks of the apache2 workload (mpm_event, mod_status as Debian enables it).

check.py save    fetch the page a few times, note the parent and worker PIDs and the
                 scoreboard's counters (shared memory of the running server)
check.py verify  the same processes serve the same page, the access counter went on
                 from where it was (a fresh start counts from zero), reload still works
"""

import http.client
import json
import subprocess
import sys
import time
from pathlib import Path

SAVED = Path("/var/lib/seamless-workload-apache2.json")


def get(path: str) -> str:
    conn = http.client.HTTPConnection("127.0.0.1", 80, timeout=10)
    conn.request("GET", path)
    resp = conn.getresponse()
    body = resp.read().decode()
    assert resp.status == 200, (path, resp.status)
    return body


def status() -> dict:
    pairs = (ln.split(":", 1) for ln in get("/server-status?auto").splitlines() if ":" in ln)
    return {k.strip(): v.strip() for k, v in pairs}


def processes() -> dict:
    main = subprocess.run(
        ["systemctl", "show", "-p", "MainPID", "--value", "apache2"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    out = subprocess.run(["pgrep", "-x", "apache2"], capture_output=True, text=True).stdout.split()
    return {"main": int(main), "all": sorted(int(p) for p in out)}


if sys.argv[1] == "save":
    for _ in range(5):
        page = get("/")
    st = status()
    state = {"page": page, **processes(), "accesses": int(st["Total Accesses"]), "mpm": st.get("ServerMPM")}
    SAVED.write_text(json.dumps(state))
    print(f"apache2: parent {state['main']}, processes {state['all']}, accesses {state['accesses']}")
else:
    saved = json.loads(SAVED.read_text())
    page = get("/")
    st = status()
    now = {"page": page, **processes(), "accesses": int(st["Total Accesses"]), "mpm": st.get("ServerMPM")}
    print(f"before: parent {saved['main']}, processes {saved['all']}, accesses {saved['accesses']}")
    print(f"after:  parent {now['main']}, processes {now['all']}, accesses {now['accesses']}")
    assert now["mpm"] == "event", now["mpm"]
    assert (now["main"], now["all"], now["page"]) == (saved["main"], saved["all"], saved["page"])
    assert now["accesses"] > saved["accesses"], "the scoreboard counts from zero again: a fresh apache2"
    # apachectl graceful signals the PID in /run/apache2/apache2.pid: carried across.
    subprocess.run(["systemctl", "reload", "apache2"], check=True)
    time.sleep(3)
    print(f"after reload: {processes()['all']} serving: {get('/').strip()}")
    print("apache2 kept its processes and its scoreboard, and reloads")
