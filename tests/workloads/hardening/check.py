#!/usr/bin/python3
"""before/after checks of the hardening workload: the sandbox is what it was, seen from /proc.

For each unit: its in-memory token (hold.py), and a fingerprint of what systemd
set up, read from /proc and the unit's cgroup: every mount of its namespace
with its flags and file system options, credentials, capability sets,
no_new_privs, seccomp, rlimits, umask, personality, OOM score, nice, CPU
affinity, namespaces of its own, cgroup limits, and what the process itself can
read and write (hold.py PROBE). After the restore all of it must be the same.

check.py save    note it all
check.py verify  the same process, the same token, the same fingerprint
"""

import json
import socket
import subprocess
import sys
from pathlib import Path

SAVED = Path("/var/lib/seamless-workload-hardening.json")
UNITS = {
    "seamless-harden-strict.service": 7801,
    "seamless-harden-full.service": 7802,
    "seamless-harden-yes.service": 7803,
}
STATUS = [
    "Uid",
    "Gid",
    "Groups",
    "CapInh",
    "CapPrm",
    "CapEff",
    "CapBnd",
    "CapAmb",
    "NoNewPrivs",
    "Seccomp",
    "Seccomp_filters",
    "Umask",
    "Cpus_allowed_list",
]
# Mounts the host made after the unit started, which the restore leaves out (docs/design.md),
# and the host's binfmt_misc automount point, which shows the autofs or the mount behind it
# depending on whether anything touched it in this boot.
RUNTIME = (
    "/run/seamless",
    "/run/user/",
    "/run/netns",
    "/sys/kernel/tracing",
    "/run/credentials/",
    "/proc/sys/fs/binfmt_misc",
)
# CRIU restores every tree into a time namespace of its own, whose offsets keep the tree's
# CLOCK_MONOTONIC and CLOCK_BOOTTIME going on from where they were (criu/timens.c).
CRIU_TIME_NS = {"time", "time_for_children"}


def ask(port: int, cmd: str) -> dict:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(cmd.encode() + b"\n")
        return json.loads(s.makefile().readline())


def show(unit: str, *props: str) -> list[str]:
    args = [a for p in props for a in ("-p", p)]
    return subprocess.run(
        ["systemctl", "show", *args, "--value", unit], capture_output=True, text=True, check=True
    ).stdout.splitlines()


def mounts(pid: int) -> list[str]:
    out = set()
    for line in Path(f"/proc/{pid}/mountinfo").read_text().splitlines():
        left, _, right = line.partition(" - ")
        f, r = left.split(), right.split()
        point = f[4]
        if point.startswith(RUNTIME):
            continue
        fstype, superopts = r[0], r[2] if len(r) > 2 else ""
        # Options of this boot, not of the unit: devtmpfs is sized from the RAM the kernel sees.
        if fstype == "devtmpfs":
            superopts = ",".join(o for o in superopts.split(",") if not o.startswith(("size=", "nr_inodes=")))
        out.add(f"{point} {f[5]} {fstype} {superopts}")
    return sorted(out)


def fingerprint(unit: str) -> dict:
    pid = int(show(unit, "MainPID")[0])
    cgroup = show(unit, "ControlGroup")[0]
    status = {
        k: v.strip()
        for k, _, v in (ln.partition(":") for ln in Path(f"/proc/{pid}/status").read_text().splitlines())
        if k in STATUS
    }
    stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    own_ns = sorted(
        ns.name
        for ns in Path(f"/proc/{pid}/ns").iterdir()
        if ns.readlink() != Path(f"/proc/1/ns/{ns.name}").readlink() and ns.name not in CRIU_TIME_NS
    )
    limits = {
        f: Path(f"/sys/fs/cgroup{cgroup}/{f}").read_text().strip()
        for f in ("memory.max", "cpu.max", "pids.max")
    }
    return {
        "pid": pid,
        "status": status,
        "limits": Path(f"/proc/{pid}/limits").read_text().splitlines(),
        "personality": Path(f"/proc/{pid}/personality").read_text().strip(),
        "oom_score_adj": Path(f"/proc/{pid}/oom_score_adj").read_text().strip(),
        "nice": stat[16],
        "own_namespaces": own_ns,
        "cgroup": cgroup,
        "cgroup_limits": limits,
        "mounts": mounts(pid),
    }


def host_cgroup2() -> str:
    """The host's cgroup2 mount: one superblock for the whole machine, whoever mounts it."""
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        left, _, right = line.partition(" - ")
        if left.split()[4] == "/sys/fs/cgroup":
            return right
    return ""


def state() -> dict:
    out: dict = {
        u: {**fingerprint(u), "probe": ask(port, "PROBE"), "token": ask(port, "GET")["token"]}
        for u, port in UNITS.items()
    }
    out["host cgroup2"] = host_cgroup2()
    return out


def diff(a: object, b: object, where: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        return [d for k in sorted(set(a) | set(b)) for d in diff(a.get(k), b.get(k), f"{where}.{k}")]
    if isinstance(a, list) and isinstance(b, list) and where.endswith("mounts"):
        return [f"{where}: lost {m}" for m in a if m not in b] + [
            f"{where}: new {m}" for m in b if m not in a
        ]
    return [] if a == b else [f"{where}: {a!r} -> {b!r}"]


if sys.argv[1] == "save":
    st = state()
    SAVED.write_text(json.dumps(st))
    for u, s in st.items():
        if u not in UNITS:
            continue
        print(
            f"{u}: PID {s['pid']}, {len(s['mounts'])} mounts, namespaces {s['own_namespaces']}, "
            f"seccomp {s['status'].get('Seccomp_filters')}, probe {s['probe']}"
        )
else:
    saved = json.loads(SAVED.read_text())
    now = state()
    problems = diff(saved, now)
    for p in problems:
        print(p)
    assert not problems, f"{len(problems)} difference(s) in the sandboxes"
    print(
        f"the {len(UNITS)} hardened services kept their process, token and sandbox: "
        f"{sum(len(now[u]['mounts']) for u in UNITS)} mounts, capabilities, seccomp, limits and "
        "cgroup limits as they were"
    )
