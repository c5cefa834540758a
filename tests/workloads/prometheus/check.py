#!/usr/bin/python3
"""before/after checks of the prometheus workload (Debian's unit and config).

Prometheus replays its write-ahead log at start, so the samples on disk would
come back after a cold start too, and its process_start_time_seconds is read
from /proc at each scrape (after a restore it says when the restore was). What
only the running process holds: the time it loaded its configuration (set once,
at start) and the counters of its own HTTP API, both on its /metrics page.

check.py save    a few API queries; note the configuration's load time and the query counter
check.py verify  the same process (same PID, same load time), the counter went on, and its
                 head block still answers queries for samples from before the upgrade
"""

import json
import re
import subprocess
import sys
import urllib.parse
import urllib.request
from pathlib import Path

SAVED = Path("/var/lib/seamless-workload-prometheus.json")
BASE = "http://127.0.0.1:9090"


def query(q: str) -> list:
    with urllib.request.urlopen(f"{BASE}/api/v1/query?query={urllib.parse.quote(q)}", timeout=30) as r:
        return json.loads(r.read())["data"]["result"]


def metric(page: str, pattern: str) -> float:
    m = re.search(rf"^{pattern} (\S+)$", page, re.M)
    return float(m.group(1)) if m else -1.0


def state() -> dict:
    pid = int(
        subprocess.run(
            ["systemctl", "show", "-p", "MainPID", "--value", "prometheus"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    )
    with urllib.request.urlopen(f"{BASE}/metrics", timeout=30) as r:
        page = r.read().decode()
    return {
        "pid": pid,
        "loaded": metric(page, "prometheus_config_last_reload_success_timestamp_seconds"),
        "queries": metric(page, r'prometheus_http_requests_total\{code="200",handler="/api/v1/query"\}'),
    }


if sys.argv[1] == "save":
    for _ in range(3):
        query("up")
    st = state()
    SAVED.write_text(json.dumps(st))
    print(f"prometheus: {st}")
else:
    saved = json.loads(SAVED.read_text())
    now = state()
    print(f"before: {saved}")
    print(f"after:  {now}")
    assert now["pid"] == saved["pid"] and now["loaded"] == saved["loaded"] > 0, (
        "a different prometheus process"
    )
    assert now["queries"] >= saved["queries"] >= 3, "its HTTP counters started again"
    assert query("up[10m]"), "the head block has no samples"
    print("prometheus kept its process, its counters and its head block")
