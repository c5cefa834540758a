#!/usr/bin/python3
"""before/after checks of the postgresql workload (Debian's cluster, its units as shipped).

PostgreSQL keeps a small System V segment beside its shared memory, in the
host's IPC namespace; seamless-systemd makes it again in the new boot (see
seamless_systemd/sysv.py) and CRIU brings back the rest. What must hold is what
only memory had: the same postmaster and auxiliary processes with the same
start time, and the table's pages still in shared_buffers, seen through
pg_buffercache *before* anything reads the table again. A cold start begins
with empty buffers; the save takes a CHECKPOINT before it reads the table, so
that not even crash recovery's WAL replay would read its pages back. Then the
committed row.

check.py save    commit a row, read it into shared_buffers, note processes and buffers
check.py verify  the same processes, the same start time, the row's pages still cached
"""

import json
import secrets
import subprocess
import sys
import time
from pathlib import Path

SAVED = Path("/var/lib/seamless-workload-postgresql.json")
AUX = "('checkpointer', 'background writer', 'walwriter', 'autovacuum launcher')"


def sql(query: str) -> str:
    p = subprocess.run(
        ["runuser", "-u", "postgres", "--", "psql", "-XAtq", "-c", query],
        capture_output=True,
        text=True,
        timeout=60,
    )
    if p.returncode != 0:
        raise SystemExit(f"psql -c {query!r}: exit {p.returncode}: {p.stderr.strip()}")
    return p.stdout.strip()


def postmaster() -> int:
    return int(Path("/var/lib/postgresql/15/main/postmaster.pid").read_text().split()[0])


def memory() -> dict:
    """What lives only in the cluster's memory (never reads the table itself)."""
    cached = sql(
        "SELECT count(*) FROM pg_buffercache WHERE reldatabase = "
        "(SELECT oid FROM pg_database WHERE datname = current_database()) "
        "AND relfilenode = pg_relation_filenode('kept')"
    )
    aux = sql(
        f"SELECT backend_type || '=' || pid FROM pg_stat_activity WHERE backend_type IN {AUX} ORDER BY 1"
    )
    return {
        "postmaster": postmaster(),
        "started": sql("SELECT pg_postmaster_start_time()"),
        "aux": aux.splitlines(),
        "kept_buffers": int(cached),
    }


def follow_plans_advice() -> None:
    """Restart the cluster if plan says its System V segment and its shared memory share a number.

    The kernel hands out both numbers; when they meet, CRIU would take one for
    the other, plan refuses and says to restart (seamless_systemd/sysv.py,
    clashes). A sysadmin would do just that before the upgrade.
    """
    p = subprocess.run(["seamless-upgrade", "plan"], capture_output=True, text=True)
    clash = [x for x in (p.stdout + p.stderr).splitlines() if "whose inode" in x and "postgresql" in x]
    if clash:
        print(f"plan says: {clash[0].strip()}; restarting the cluster")
        subprocess.run(["systemctl", "restart", "postgresql@15-main.service"], check=True)
        time.sleep(5)


if sys.argv[1] == "save":
    follow_plans_advice()
    token = secrets.token_hex(16)
    sql("CREATE EXTENSION IF NOT EXISTS pg_buffercache")
    sql(f"CREATE TABLE IF NOT EXISTS kept (v text); INSERT INTO kept VALUES ('{token}')")
    sql("CHECKPOINT")  # a replay of the WAL after a crash would not touch the table
    sql("SELECT count(*) FROM kept")  # its pages are in shared_buffers
    state = {"token": token, **memory()}
    assert state["kept_buffers"] > 0, state
    SAVED.write_text(json.dumps(state))
    print(f"postgresql: {state}")
else:
    # The postmaster checks its lock file (postmaster.pid) once a minute and shuts down
    # if it is gone; the unit's stop command removed it once (docs/design.md). Let a
    # check go by, with a connection every 10 s.
    for _ in range(7):
        time.sleep(10)
        sql("SELECT 1")
    log = Path("/var/log/postgresql/postgresql-15-main.log")
    print("\n".join(log.read_text(errors="replace").splitlines()[-6:]))  # for a failure's report
    crashes = [
        x
        for x in subprocess.run(["dmesg"], capture_output=True, text=True).stdout.splitlines()
        if "segfault" in x
    ]
    print("\n".join(crashes[-3:]))
    saved = json.loads(SAVED.read_text())
    now = memory()  # first: nothing has read the table in this boot
    rows = sql("SELECT v FROM kept").splitlines()
    print(f"before: {saved}; after: {now}, rows {rows}")
    assert now["postmaster"] == saved["postmaster"], "a new postmaster: the cluster was started afresh"
    assert now["started"] == saved["started"], "pg_postmaster_start_time() changed"
    assert now["aux"] == saved["aux"], "the auxiliary processes are not the same"
    assert now["kept_buffers"] == saved["kept_buffers"], "the table's pages are no longer in shared_buffers"
    assert saved["token"] in rows, "a committed row is missing"
    print("postgresql: the same postmaster and processes, its shared_buffers kept, its rows there")
