#!/usr/bin/python3
"""before/after checks of the RAM-on-demand workload (docs/ram-on-demand.md).

On a guest booted with memmap= (make demo WORKLOAD=tests/workloads/ram-on-demand)
the same service is kept in the reserved mode instead: only the keeper is checked.

check.py save    the boot has no memmap= and no /dev/pmem*; asking for more RAM
                 than there is is refused; arm takes the RAM and disarm gives
                 it all back; note the keeper's digest and PID and the RAM
                 this kernel has
check.py verify  the same keeper holds the same bytes; keeper-b, whose images
                 damage.py corrupted in this boot, started afresh; the images'
                 RAM was named to this kernel only and has been given back
"""

import glob
import json
import socket
import subprocess
import sys
import time
from pathlib import Path

SAVED = Path("/var/lib/seamless-workload-ram-on-demand.json")
MiB = 1 << 20


def keeper(port: int = 7801) -> dict:
    # 96 MiB from os.urandom take a while under emulation: wait for it to listen.
    for _ in range(300):
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=60) as s:
                s.sendall(b"SUM\n")
                return json.loads(s.makefile().readline())
        except ConnectionRefusedError:
            time.sleep(1)
    raise SystemExit(f"the keeper never answered on 127.0.0.1:{port}")


def mem_total() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) << 10
    raise SystemExit("no MemTotal in /proc/meminfo")


def meminfo(key: str) -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise SystemExit(f"no {key} in /proc/meminfo")


def seamless(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["seamless-upgrade", *args], capture_output=True, text=True)


def held() -> dict:
    """What RAM on demand holds right now."""
    mounts = Path("/proc/self/mounts").read_text()
    return {
        "hugepages": meminfo("HugePages_Total"),
        "mounted": "/run/seamless/pmem" in mounts,
        "nbd_attached": [p.parent.name for p in Path("/sys/block").glob("nbd*/pid")],
        "ram_service": subprocess.run(
            ["systemctl", "is-active", "seamless-ram.service"], capture_output=True, text=True
        ).stdout.strip(),
    }


def arm_then_disarm() -> None:
    """arm takes the RAM and mounts the images there (twice: the second replaces the first);
    disarm gives every bit of it back."""
    assert held() == {"hugepages": 0, "mounted": False, "nbd_attached": [], "ram_service": "inactive"}, held()
    p = seamless("arm", "--no-trial")
    assert p.returncode == 0, p.stdout + p.stderr
    armed = held()
    print(f"armed: {armed}")
    assert armed["hugepages"] * 2 >= 384 and armed["mounted"] and armed["nbd_attached"], armed
    assert armed["ram_service"] == "active", armed
    dev = Path("/dev") / armed["nbd_attached"][0]
    assert dev.stat().st_mode & 0o077 == 0, f"{dev} is mode {dev.stat().st_mode & 0o777:o}"
    status = seamless("status").stdout
    assert "RAM for the images:" in status and "/dev/nbd" in status, status
    print(next(x for x in status.splitlines() if x.startswith("RAM for the images")))
    # Arming again replaces that upgrade: its RAM is given back first, not taken twice.
    p = seamless("arm", "--no-trial")
    assert p.returncode == 0, p.stdout + p.stderr
    again = held()
    print(f"armed again: {again}")
    assert again["mounted"] and again["hugepages"] <= armed["hugepages"] + 1, again
    p = seamless("disarm")
    assert p.returncode == 0, p.stdout + p.stderr
    after = held()
    print(f"disarmed: {after}")
    assert after == {"hugepages": 0, "mounted": False, "nbd_attached": [], "ram_service": "inactive"}, after


def too_much_is_refused() -> None:
    """More than the machine has: plan and arm refuse before anything is taken."""
    big = Path("/etc/seamless/conf.d/99-too-much.yaml")
    big.parent.mkdir(parents=True, exist_ok=True)
    big.write_text("pmem: {size: 64G}\n")
    try:
        for cmd in ("plan", "arm"):
            p = seamless(cmd)
            out = p.stdout + p.stderr
            assert p.returncode != 0 and "MiB is available (MemAvailable" in out, out
        print(f"64G refused: {next(x for x in out.splitlines() if 'MemAvailable' in x).strip()}")
        assert held()["hugepages"] == 0
    finally:
        big.unlink()


def free() -> str:
    return subprocess.run(["free", "-m"], capture_output=True, text=True).stdout


cmdline = Path("/proc/cmdline").read_text()
# On a guest booted with a memmap= reservation (make demo's default machine)
# the same workload is the reserved mode's side of the comparison: only the
# keeper is checked.
RESERVED = "memmap=" in cmdline and "seamless.ram=on-demand" not in cmdline
if sys.argv[1] == "save" and RESERVED:
    SAVED.write_text(json.dumps({**keeper(), "b": keeper(7802), "mem_total": mem_total()}))
    print(f"reserved mode (memmap= on the command line): {cmdline.strip()}")
elif sys.argv[1] == "save":
    assert not glob.glob("/dev/pmem*"), glob.glob("/dev/pmem*")
    too_much_is_refused()
    arm_then_disarm()
    state = {**keeper(), "b": keeper(7802), "mem_total": mem_total()}
    SAVED.write_text(json.dumps(state))
    print(f"keeper: PID {state['pid']}, {state['bytes'] >> 20} MiB, sha256 {state['sha256'][:16]}")
    print(f"no memmap= on the command line, no /dev/pmem*; MemTotal {state['mem_total'] >> 20} MiB\n{free()}")
else:
    saved = json.loads(SAVED.read_text())
    now = keeper()
    assert now["pid"] == saved["pid"], f"a fresh keeper: PID {saved['pid']} -> {now['pid']}"
    assert now["sha256"] == saved["sha256"], "the keeper's bytes changed"
    print(f"keeper: the same PID {now['pid']} and the same {now['bytes'] >> 20} MiB")
    if RESERVED:
        raise SystemExit(0)
    # The old boot's shutdown stopped the images' mount, then the RAM server, in order:
    # systemd broke no ordering cycle to get there.
    old = subprocess.run(
        ["journalctl", "-b", "-1", "-o", "cat", "--no-pager"], capture_output=True, text=True
    )
    cycles = [line for line in old.stdout.splitlines() if "ordering cycle" in line]
    assert old.returncode == 0 and not cycles, cycles or old.stderr
    # The damaged range: keeper-b's images failed their checksums, it started afresh.
    rep = json.loads(Path("/var/lib/seamless/reports/last.json").read_text())
    b = next(u for u in rep["units"] if u["unit"] == "seamless-keeper-b.service")
    fresh = keeper(7802)
    print(f"keeper-b: {b['outcome']} ({b['reason']}), PID {saved['b']['pid']} -> {fresh['pid']}")
    assert b["outcome"] == "cold-started" and "checksum" in (b["reason"] or ""), b
    assert fresh["pid"] != saved["b"]["pid"] and fresh["sha256"] != saved["b"]["sha256"], fresh
    words = cmdline.split()
    assert "seamless.ram=on-demand" in words, cmdline
    ours = words[words.index("seamless.ram=on-demand") + 1]
    print(f"this kernel was told: {ours}")
    ram = rep["ram"]
    back = ram["given_back"]
    print(json.dumps(ram, indent=1))
    assert ram["bytes"] >= 384 * MiB and back["taken_bytes"] == ram["bytes"], ram
    assert back["returned_bytes"] >= 128 * MiB, back
    # Not mounted any more, and no device-mapper table left.
    assert "/run/seamless/pmem" not in Path("/proc/self/mounts").read_text()
    assert not Path("/dev/mapper/seamless-images").exists()
    total = mem_total()
    kept = sum(k["bytes"] for k in back.get("kept", []))
    print(
        f"MemTotal: {saved['mem_total'] >> 20} MiB in the old kernel, {total >> 20} MiB now; "
        f"{kept >> 20} MiB left as /dev/pmemN\n{free()}"
    )
    # What the old kernel had, less what could not come back (whole memory blocks only).
    assert total >= saved["mem_total"] - (ram["bytes"] - back["returned_bytes"]) - 64 * MiB, total
    print("the keeper kept its bytes; the images' RAM was taken at arm time and given back")
