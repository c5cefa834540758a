#!/usr/bin/python3
"""The guest side of the benchmark (scenario "bench"): one measured kernel switch per run.

/etc/seamless-test/bench.json lists the runs, e.g. [{"scenario": "a",
"size": 64}, {"scenario": "b", "size": 64}]. Each run is one measured
switch from the running kernel to the other one: A -> B, then B -> A, and
so on (the two kernels of the image). seamless-bench.service is started
with SIZE MiB of state, the host's prober (tests/vm/bench.py) sees it
answer ("bench-ready"), then the switch ("bench-switch", with the kernel
it goes to):

  a      floor: a plain kexec, nothing preserved; in B the service starts
         with no state and answers at once
  b      seamless-upgrade run --kernel OTHER (images in the reservation,
         memmap= on this guest's command line)
  b-ram  seamless-upgrade run with pmem.mode: on-demand (RAM taken at arm time)
  b-sha256  (b) with images.checksum: sha256, the checksum used before crc32
  b-nopre   (b) with images.pre_dump: false: the whole memory written in the freeze
  b-nowarm  (b) with warm.page_cache and warm.dentries off
  b-thp     (b) with warm.huge_pages on: the restored memory collapsed into huge pages again
  b-warm-early  (b) with warm.page_cache_early: the page cache read back during the restore
  b-lazy    (b) with lazy_restore: the memory served from the images as the service
            touches it (with the pre-dump rounds, only what changed since the last
            round: CRIU 4.1.1 restores the pages a final dump left to its parent eagerly)
  b-lazy-nopre  (b-lazy) without the pre-dump rounds: all the memory lazy, and the
            whole of it dumped in the freeze
  b-write   (b) with the service also writing 32 MiB/s into a file, never synced
  b-write-nowb  (b-write) with early_writeback: false: all the dirty page cache
            left to the shutdown's sync
  c      (b) with pmem.mode: disk: the images on the virtual disk, not in RAM
  d      cold: the service saves its state to a snapshot on disk when it is
         stopped and loads it when it starts (what a sysadmin does today);
         systemctl reboot, and the host starts QEMU again with the other kernel

In the new kernel: wait for the service (and for restore-finish), wait until
the host has checked every block of the state and taken its page-cache
probes, report ("bench-after"), and start the next run from there. Until
2026-12-08 every run went A -> B and a plain kexec went back to A,
unmeasured: some 30 s of every run, a third of the whole at 64 MiB.
"bench-done" when all ran.
"""

import json
import os
import socket
import sys
import time
from pathlib import Path

sys.path.insert(0, "/usr/local/lib/seamless-test")
from driver import emit, sh, wait_for_finish

from seamless_systemd import kernels

PLAN = Path("/etc/seamless-test/bench.json")
STEP = Path("/var/lib/seamless-test/bench-state.json")
UNIT = "seamless-bench.service"
PORT = 7796
DROPIN = Path(f"/etc/systemd/system/{UNIT}.d/50-size.conf")
SNAPSHOT = Path("/var/lib/seamless-bench/state.snap")
MODE = Path("/etc/seamless/conf.d/70-bench-mode.yaml")
DISK_IMAGES = Path("/var/lib/seamless/images")
# What a scenario changes in the configuration (an optimization off, another mode).
SCENARIO_CONFIG = {
    "b-ram": "pmem: {mode: on-demand}\n",
    "b-sha256": "images: {checksum: sha256}\n",
    "b-nopre": "images: {pre_dump: false}\n",
    "b-nowarm": "warm: {page_cache: false, dentries: false}\n",
    "b-thp": "warm: {huge_pages: true}\n",
    "b-warm-early": "warm: {page_cache_early: true}\n",
    "b-lazy": "lazy_restore: true\n",
    "b-lazy-nopre": "lazy_restore: true\nimages: {pre_dump: false}\n",
    "c": "pmem: {mode: disk}\n",
    "b-write-nowb": "early_writeback: false\n",
}
# Scenarios whose service also writes files while it runs (dirty page cache), and how fast.
WRITERS = {"b-write": 32, "b-write-nowb": 32}
# The page-cache probe: a file the service reads at random (READS), read whole once before each switch.
CACHE_FILE = Path("/var/lib/seamless-bench/cache.dat")
CACHE_MIB = 256
KERNELS = sorted(Path("/boot").glob("vmlinuz-*"), key=lambda p: kernels.version_key(p.name))


def other_kernel():
    """The installed kernel this one is not: where the next switch goes."""
    running = os.uname().release
    others = [k for k in KERNELS if k.name.removeprefix("vmlinuz-") != running]
    if len(others) != 1:
        raise SystemExit(f"want two kernels in /boot, one of them running ({running}): {KERNELS}")
    return others[0]


def save(state):
    STEP.write_text(json.dumps(state))
    os.sync()


def ask(cmd="GET", timeout=10):
    with socket.create_connection(("127.0.0.1", PORT), timeout=timeout) as s:
        s.sendall(cmd.encode() + b"\n")
        return json.loads(s.makefile().readline())


def wait_answer(limit):
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        try:
            return ask()
        except (OSError, ValueError):
            time.sleep(0.2)
    raise SystemExit(f"{UNIT} does not answer on {PORT}")


def start_service(step, limit):
    """Start the service and wait for its answer.

    Should its port still be taken (bind: Address already in use), say what
    held it ("bench-port-busy"), and start it again until it binds. The first
    runs that started it again in the boot that restored it (2026-12-08) found
    the restored instance's connections keeping the port for a minute after it
    stopped: restore-unit's TCP repairs had reset their SO_REUSEADDR
    (netlock._reuse_kept; tests/unit/test_tcp_restart.py).
    """
    began = time.monotonic()
    sh("systemctl", "start", UNIT)
    deadline = began + limit
    busy = None
    while time.monotonic() < deadline:
        try:
            got = ask()
        except (OSError, ValueError):
            got = None
        if got is not None:
            if busy is not None:
                emit(
                    "bench-port-busy",
                    {"step": step, **busy, "bound_after_s": round(time.monotonic() - began, 3)},
                )
            return got
        if sh("systemctl", "is-failed", "--quiet", UNIT)[0] == 0:
            if busy is None:
                _, ss = sh("ss", "-tanoeH", f"sport = :{PORT}")
                _, log = sh("journalctl", "-u", UNIT, "-n", "2", "--no-pager", "-o", "cat")
                busy = {
                    "ss": ss[-3000:],
                    "log": log[-600:],
                    "failed_after_s": round(time.monotonic() - began, 3),
                }
            sh("systemctl", "reset-failed", UNIT)
            time.sleep(0.5)
            sh("systemctl", "start", UNIT)
        time.sleep(0.2)
    raise SystemExit(f"{UNIT} does not answer on {PORT}")


# Blocks the guest itself asks for in probe(): the service counts them among the checked.
PROBE_BLOCKS = 2


def biggest_mapping(pid):
    """The service's largest mapping (its state) as smaps shows it: size, huge pages, VmFlags."""
    best, cur = None, None
    for line in Path(f"/proc/{pid}/smaps").read_text().splitlines():
        head = line.split()
        if head and "-" in head[0] and ":" not in head[0]:
            lo, hi = (int(x, 16) for x in head[0].split("-"))
            cur = {"range": head[0], "mib": (hi - lo) >> 20, "perms": head[1] if len(head) > 1 else ""}
            if best is None or cur["mib"] > best["mib"]:
                best = cur
        elif cur is not None and head and head[0] in ("AnonHugePages:", "VmFlags:", "Anonymous:"):
            cur[head[0].rstrip(":")] = " ".join(head[1:])
    return best


def collapse_traced(step):
    """Ask for the service's memory in huge pages once more, with the kernel's scan results traced."""
    trace = Path("/sys/kernel/tracing")
    if not (trace / "events/huge_memory/mm_khugepaged_scan_pmd").exists():
        sh("mount", "-t", "tracefs", "tracefs", str(trace))
    event = trace / "events/huge_memory/mm_khugepaged_scan_pmd/enable"
    try:
        (trace / "trace").write_text("")
        event.write_text("1")
        pid = ask()["pid"]
        _, got = sh(
            "python3", "-c", f"from seamless_systemd import hugepages; print(hugepages.collapse({pid}))"
        )
        event.write_text("0")
        lines = (trace / "trace").read_text().splitlines()
    except OSError as e:
        emit("bench-collapse", {"step": step, "error": str(e)})
        return
    results = {}
    for ln in lines:
        for word in ln.split():
            if word.startswith("status="):
                results[word] = results.get(word, 0) + 1
    emit(
        "bench-collapse",
        {"step": step, "collapse": got.strip()[-600:], "scan_results": results, "lines": lines[-5:]},
    )


def probe(tag, step):
    """What the guest sees of the service: how long a BLOCK takes, its huge pages, who has the CPU."""
    try:
        pid = ask()["pid"]
        took = []
        for i in range(PROBE_BLOCKS):
            t0 = time.monotonic()
            ask(f"BLOCK {i}", timeout=120)
            took.append(round(time.monotonic() - t0, 3))
        rollup = Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()
        largest = biggest_mapping(pid)
        fields = {
            ln.split(":")[0]: ln.split()[1] for ln in rollup if ln.split(":")[0] in ("Rss", "AnonHugePages")
        }
    except (OSError, ValueError) as e:
        emit("bench-probe", {"tag": tag, "step": step, "error": str(e)})
        return 0
    meminfo = {
        ln.split(":")[0]: ln.split()[1]
        for ln in Path("/proc/meminfo").read_text().splitlines()
        if ln.split(":")[0] in ("MemFree", "MemAvailable", "AnonHugePages", "Cached", "Dirty")
    }
    emit(
        "bench-probe",
        {
            "tag": tag,
            "step": step,
            "block_s": took,
            "smaps_kib": fields,
            "largest_mapping": largest,
            "meminfo_kib": meminfo,
            "loadavg": Path("/proc/loadavg").read_text().strip(),
            "top": sh("ps", "-eo", "pcpu,rss,comm", "--sort=-pcpu")[1].splitlines()[:6],
        },
    )
    return PROBE_BLOCKS


def set_size(size, snapshot=False, write=0):
    """The service's state size from its next start; SNAPSHOT: saved at stop, loaded at start;
    WRITE: MiB a second it writes into a file while it runs."""
    DROPIN.parent.mkdir(parents=True, exist_ok=True)
    text = f"[Service]\nEnvironment=BENCH_SIZE_MIB={size}\nEnvironment=BENCH_CACHE_FILE={CACHE_FILE}\n"
    if write:
        text += f"Environment=BENCH_WRITE_MIB_S={write}\n"
    if snapshot:
        SNAPSHOT.parent.mkdir(parents=True, exist_ok=True)
        text += f"Environment=BENCH_SNAPSHOT={SNAPSHOT}\nTimeoutStopSec=900\n"
    DROPIN.write_text(text)
    sh("systemctl", "daemon-reload")


def cache_file():
    """The page-cache probe's file, made once, then read whole: it is in the page cache before the switch."""
    if not CACHE_FILE.exists() or CACHE_FILE.stat().st_size != CACHE_MIB << 20:
        CACHE_FILE.parent.mkdir(parents=True, exist_ok=True)
        with open(f"{CACHE_FILE}.tmp", "wb") as f:
            for _ in range(CACHE_MIB):
                f.write(os.urandom(1 << 20))
            os.fsync(f.fileno())
        os.rename(f"{CACHE_FILE}.tmp", CACHE_FILE)
    with open(CACHE_FILE, "rb", buffering=0) as f:
        buf = bytearray(1 << 20)
        while f.readinto(buf):
            pass


def plain_kexec(kernel):
    """kexec into KERNEL with nothing armed: the services stop and start as in a reboot."""
    version = kernel.name.removeprefix("vmlinuz-")
    cmdline = kernels.new_cmdline(Path("/proc/cmdline").read_text(), {})
    rc, out = sh(
        "kexec", "-l", str(kernel), f"--initrd=/boot/initrd.img-{version}", f"--command-line={cmdline}"
    )
    if rc != 0:
        raise SystemExit(f"kexec -l {kernel} failed: {out}")
    sh("systemctl", "kexec")


def start_run(plan, state):
    run = plan[state["step"]]
    if run["scenario"] in SCENARIO_CONFIG:
        MODE.write_text(SCENARIO_CONFIG[run["scenario"]])
    else:
        MODE.unlink(missing_ok=True)
    sh("systemctl", "stop", UNIT)
    SNAPSHOT.unlink(missing_ok=True)
    # As in a fresh boot: the images' mount of the last upgrade goes (it stays
    # after the restore; an upgrade in another pmem.mode refuses it as "a mount
    # of something else").
    if sh("mountpoint", "-q", "/run/seamless/pmem")[0] == 0:
        sh("umount", "/run/seamless/pmem")
    cache_file()
    set_size(run["size"], snapshot=run["scenario"] == "d", write=WRITERS.get(run["scenario"], 0))
    before = start_service(state["step"], 600 + 2 * run["size"])
    seed = ask("SEED")["seed"]
    estimate = None
    if run["scenario"] not in ("a", "d"):
        # What plan expects the images to take, set beside what they took (the report).
        rc, out = sh("seamless-upgrade", "plan", "--json")
        units = json.loads(out)["units"] if rc in (0, 1) and out.startswith("{") else []
        estimate = next((u["estimate_bytes"] for u in units if u["unit"] == UNIT), None)
    emit(
        "bench-ready",
        {"step": state["step"], **run, "token": before["token"], "seed": seed, "estimate_bytes": estimate},
    )
    probe("before", state["step"])
    time.sleep(5)  # the prober's answers before the switch
    target = other_kernel()
    to = target.name.removeprefix("vmlinuz-")
    save({**state, "phase": "switched"})
    emit("bench-switch", {"step": state["step"], "at": time.time(), "from": os.uname().release, "to": to})
    if run["scenario"] == "a":
        set_size(0)  # what starts in the new kernel: the same service, with nothing to keep
        plain_kexec(target)
    elif run["scenario"] == "d":
        # QEMU ends (-no-reboot); the host boots it again with the kernel "to" names.
        sh("systemctl", "reboot")
    else:
        rc, out = sh("seamless-upgrade", "run", "--kernel", to)
        if rc != 0:
            emit("bench-error", {"step": state["step"], "out": out})
            save({**state, "phase": "failed"})
            sh("systemctl", "poweroff")
    time.sleep(600)


def after_run(plan, state):
    run = plan[state["step"]]
    t0 = time.time()
    now = wait_answer(300)
    if run["scenario"] not in ("a", "d"):
        collapse_traced(state["step"])
    # The kept process counts the blocks probe() asked for before the switch too.
    mine = probe("answered", state["step"]) + (PROBE_BLOCKS if run["scenario"] not in ("a", "d") else 0)
    finish = wait_for_finish() if run["scenario"] not in ("a", "d") else None
    # The host checks every block of the state through the service (not for (a)),
    # and probes its page cache right after it is back and once the state is
    # checked (READS): wait for both (looking again every minute: how the guest
    # is while the host checks). The host's prober comes through the network,
    # which may come up after the service; its READS say it saw the service back.
    # The kept service answered the probe before the switch too. (a)'s service
    # holds nothing: nothing to check, and it counts no BLOCK (probe's included).
    reads = {"a": 1, "d": 2}.get(run["scenario"], 3)
    deadline = time.monotonic() + 120 + run["size"]
    looked = time.monotonic()
    while time.monotonic() < deadline:
        now = ask()
        checked = run["scenario"] == "a" or now["checked"] >= run["size"] + mine
        if checked and now.get("reads", 0) >= reads:
            break
        if time.monotonic() - looked > 60:
            mine += probe("checking", state["step"])
            looked = time.monotonic()
        time.sleep(1)
    time.sleep(1)  # the last probe's answer on its way to the host
    rc, rep = sh("seamless-upgrade", "report", "--json")
    emit(
        "bench-after",
        {
            "step": state["step"],
            **run,
            "uname": os.uname().release,
            "token": now["token"],
            "checked": ask()["checked"],
            "finish": finish,
            "answered_after_s": round(time.time() - t0, 3),
            "report": json.loads(rep) if rc == 0 and run["scenario"] not in ("a", "d") else None,
            # pmem.mode: disk (c): what is left of the images on the disk (nothing, once used).
            "images_left_on_disk": sorted(os.listdir(DISK_IMAGES)) if DISK_IMAGES.is_dir() else [],
        },
    )
    nxt = {"step": state["step"] + 1, "phase": "start"}
    save(nxt)
    set_size(0)  # should the machine start again, the service starts empty; the next run sets its size
    SNAPSHOT.unlink(missing_ok=True)
    sh("systemctl", "stop", UNIT)
    SNAPSHOT.unlink(missing_ok=True)
    # The next run goes from here, in the same QEMU (docs/benchmarks.md: one QEMU run).
    if nxt["step"] >= len(plan):
        emit("bench-done", {"runs": len(plan)})
        sh("systemctl", "poweroff")
        time.sleep(600)
    start_run(plan, nxt)


def main():
    plan = json.loads(PLAN.read_text())
    state = json.loads(STEP.read_text()) if STEP.exists() else {"step": 0, "phase": "start"}
    if state["phase"] == "switched":
        after_run(plan, state)
    elif state["phase"] == "failed":
        emit("bench-done", {"failed": True})
        sh("systemctl", "poweroff")
    elif state["step"] >= len(plan):
        emit("bench-done", {"runs": len(plan)})
        sh("systemctl", "poweroff")
    else:
        start_run(plan, state)


if __name__ == "__main__":
    main()
