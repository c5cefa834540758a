#!/usr/bin/python3
"""before/after checks of the redis workload: what only the running server knows.

check.py save    store a random value, note the server's run_id (random at every start),
                 its PID and how many commands it has processed
check.py verify  the same server (same run_id and PID) has the value and counts on
"""

import json
import secrets
import subprocess
import sys
from pathlib import Path

SAVED = Path("/var/lib/seamless-workload-redis.json")


def cli(*args: str) -> str:
    return subprocess.run(["redis-cli", *args], capture_output=True, text=True, check=True, timeout=30).stdout


def info() -> dict:
    pairs = (ln.split(":", 1) for ln in cli("INFO").splitlines() if ":" in ln)
    return {k: v.strip() for k, v in pairs}


if sys.argv[1] == "save":
    value = secrets.token_hex(16)
    # Kept in memory only: a volatile key (with a TTL of a day) and no save in between.
    assert cli("SET", "seamless:value", value, "EX", "86400").strip() == "OK"
    i = info()
    state = {
        "value": value,
        "run_id": i["run_id"],
        "pid": int(i["process_id"]),
        "commands": int(i["total_commands_processed"]),
    }
    SAVED.write_text(json.dumps(state))
    print(f"redis: run_id {state['run_id']}, PID {state['pid']}, commands {state['commands']}")
else:
    saved = json.loads(SAVED.read_text())
    i = info()
    now = {
        "value": cli("GET", "seamless:value").strip(),
        "run_id": i["run_id"],
        "pid": int(i["process_id"]),
        "commands": int(i["total_commands_processed"]),
    }
    print(f"before: {saved}")
    print(f"after:  {now}")
    assert now["run_id"] == saved["run_id"], "a different redis process (run_id changed)"
    assert now["pid"] == saved["pid"] and now["value"] == saved["value"]
    assert now["commands"] > saved["commands"], "the command counter started again"
    print("redis kept its process, its run_id and its in-memory value")
