#!/usr/bin/python3
"""before/after checks of the tomcat10 workload: a JVM web application's memory.

check.py save    wait for tomcat (a JVM starts slowly under emulation), ask counter.jsp a
                 few times: its token (made at the first request) and its counter live
                 only in the application's memory
check.py verify  the same JVM (same PID) answers with the same token and counts on
"""

import json
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

SAVED = Path("/var/lib/seamless-workload-tomcat10.json")


def ask() -> dict:
    with urllib.request.urlopen("http://127.0.0.1:8080/counter.jsp", timeout=120) as r:
        token, count, pid = r.read().decode().split()
    return {"token": token, "count": int(count), "pid": int(pid)}


def main_pid() -> int:
    return int(
        subprocess.run(
            ["systemctl", "show", "-p", "MainPID", "--value", "tomcat10"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    )


if sys.argv[1] == "save":
    for _ in range(120):
        try:
            st = ask()
            break
        except OSError:
            time.sleep(3)
    else:
        raise SystemExit("tomcat never answered")
    for _ in range(3):
        st = ask()
    st["main_pid"] = main_pid()
    SAVED.write_text(json.dumps(st))
    print(f"tomcat10: {st}")
else:
    saved = json.loads(SAVED.read_text())
    now = {**ask(), "main_pid": main_pid()}
    print(f"before: {saved}")
    print(f"after:  {now}")
    assert (now["token"], now["pid"], now["main_pid"]) == (saved["token"], saved["pid"], saved["main_pid"])
    assert now["count"] == saved["count"] + 1, "the counter started again: a fresh JVM"
    print("tomcat10's JVM kept its process and its application's memory")
