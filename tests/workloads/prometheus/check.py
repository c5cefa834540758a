#!/usr/bin/python3
"""before/after checks of the prometheus workload (Debian's unit and config).

Prometheus replays its write-ahead log at start, so the samples on disk would
come back after a cold start too. What only the running process holds: its
start time, and counters of its own HTTP API, which start from zero in a new
process.

check.py save    a few API queries; note the start time and how many queries it served
check.py verify  the same process (same start time and PID), its counter went on, and
                 its head block still answers queries for samples from before the upgrade
"""

import json
import subprocess
import sys
import urllib.parse
import urllib.request
from pathlib import Path

SAVED = Path("/var/lib/seamless-workload-prometheus.json")
API = "http://127.0.0.1:9090/api/v1/query?query="


def query(q: str) -> list:
    with urllib.request.urlopen(API + urllib.parse.quote(q), timeout=30) as r:
        return json.loads(r.read())["data"]["result"]


def value(q: str) -> float:
    res = query(q)
    return float(res[0]["value"][1]) if res else -1.0


def state() -> dict:
    pid = int(
        subprocess.run(
            ["systemctl", "show", "-p", "MainPID", "--value", "prometheus"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    )
    return {
        "pid": pid,
        "start": value('process_start_time_seconds{job="prometheus"}'),
        "queries": value('sum(prometheus_http_requests_total{handler="/api/v1/query"})'),
    }


if sys.argv[1] == "save":
    for _ in range(3):
        st = state()
    SAVED.write_text(json.dumps(st))
    print(f"prometheus: {st}")
else:
    saved = json.loads(SAVED.read_text())
    now = state()
    print(f"before: {saved}")
    print(f"after:  {now}")
    assert now["pid"] == saved["pid"] and now["start"] == saved["start"], "a different prometheus process"
    assert now["queries"] >= saved["queries"], "its HTTP counters started again"
    assert query("up[10m]"), "the head block has no samples"
    print("prometheus kept its process, its counters and its head block")
