#!/usr/bin/python3
"""before/after checks of the mariadb workload: what only the running server holds.

check.py save    fill a MEMORY table (its rows live only in the server's memory: a
                 restart leaves it empty), note the server's PID, uptime and thread id
check.py verify  the same server (same PID, uptime went on) still has the rows
"""

import json
import secrets
import subprocess
import sys
from pathlib import Path

SAVED = Path("/var/lib/seamless-workload-mariadb.json")


def sql(query: str) -> list[list[str]]:
    out = subprocess.run(
        ["mariadb", "--batch", "--skip-column-names", "-e", query],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout
    return [ln.split("\t") for ln in out.splitlines()]


def status() -> dict:
    return dict(sql("SHOW GLOBAL STATUS WHERE Variable_name IN ('Uptime', 'Questions')"))


def main_pid() -> int:
    return int(
        subprocess.run(
            ["systemctl", "show", "-p", "MainPID", "--value", "mariadb"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    )


if sys.argv[1] == "save":
    token = secrets.token_hex(16)
    sql(
        "CREATE DATABASE IF NOT EXISTS seamless; DROP TABLE IF EXISTS seamless.kept;"
        "CREATE TABLE seamless.kept (k INT PRIMARY KEY, v VARCHAR(64)) ENGINE=MEMORY;"
        f"INSERT INTO seamless.kept VALUES (1, '{token}'), (2, 'second row');"
    )
    st = status()
    state = {
        "token": token,
        "pid": main_pid(),
        "uptime": int(st["Uptime"]),
        "questions": int(st["Questions"]),
        "aio": sql("SELECT @@innodb_use_native_aio")[0][0],
    }
    SAVED.write_text(json.dumps(state))
    print(f"mariadb: {state}")
else:
    saved = json.loads(SAVED.read_text())
    rows = sql("SELECT k, v FROM seamless.kept ORDER BY k")
    st = status()
    now = {"rows": rows, "pid": main_pid(), "uptime": int(st["Uptime"]), "questions": int(st["Questions"])}
    print(f"before: {saved}")
    print(f"after:  {now}")
    assert rows == [["1", saved["token"]], ["2", "second row"]], "the MEMORY table is empty: a fresh server"
    assert now["pid"] == saved["pid"] and now["uptime"] >= saved["uptime"]
    assert now["questions"] > saved["questions"]
    print("mariadb kept its process and the rows of its MEMORY table")
