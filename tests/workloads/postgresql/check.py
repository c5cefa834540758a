#!/usr/bin/python3
"""before/after checks of the postgresql workload.

PostgreSQL keeps a System V segment beside its shared memory, in the host's IPC
namespace, which CRIU cannot dump: `seamless-upgrade plan` says so, and with
'on_unsupported: restart' (config.yaml) the cluster is restarted afresh across
the upgrade. What must hold: it answers again, with every committed row.

check.py save    commit a row, note the postmaster's PID
check.py verify  the cluster answers and has the row (a new postmaster)
"""

import json
import secrets
import subprocess
import sys
from pathlib import Path

SAVED = Path("/var/lib/seamless-workload-postgresql.json")


def sql(query: str) -> str:
    return subprocess.run(
        ["runuser", "-u", "postgres", "--", "psql", "-XAtq", "-c", query],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout.strip()


def postmaster() -> int:
    return int(Path("/var/lib/postgresql/15/main/postmaster.pid").read_text().split()[0])


if sys.argv[1] == "save":
    token = secrets.token_hex(16)
    sql(f"CREATE TABLE IF NOT EXISTS kept (v text); INSERT INTO kept VALUES ('{token}')")
    state = {"token": token, "postmaster": postmaster()}
    SAVED.write_text(json.dumps(state))
    print(f"postgresql: {state}")
else:
    saved = json.loads(SAVED.read_text())
    rows = sql("SELECT v FROM kept").splitlines()
    now = postmaster()
    print(f"before: {saved}; after: postmaster {now}, rows {rows}")
    assert saved["token"] in rows, "a committed row is missing"
    print("postgresql answers again with its committed rows (restarted afresh, as plan said)")
