"""The benchmark: client-side downtime of a kernel switch, side by side, in one QEMU run.

``python3 -m tests.vm.bench [--sizes 64,256] [--scenarios a,b,b-ram] [--reps 3]``
(``make bench``) builds the "bench" image with the list of runs, boots it
once, and follows the guest (tests/vm/guest/bench.py), which does one kernel
switch per run, each to the other kernel (A -> B, B -> A, ...), every one
measured. Meanwhile, on the host,
outside the guest, through QEMU's forwarded port:

- the prober sends GET every 10 ms on a connection it re-opens whenever it
  fails, and checks each answer (for a kept service: the same token as
  before the switch). Downtime = last correct answer before the switch ->
  first correct answer after it;
- then it fetches every block of the state and checks each against what the
  seed and version say it must be: the time to the full state;
- one more connection stays open across the switch: a GET sent right after
  the switch, and when its answer's first byte comes;
- the page cache: READS asks the service for 2000 timed reads of 4 KiB at
  random offsets of a 256 MiB file it has open and that was read whole before
  the switch; p50 and p99 before the switch, right after the service is back
  (before the state is checked) and, but for (a), once the state has been checked.

What counts as a correct answer: for (a), any; for a kept service (b, b-ram),
the same instance (its token) as before the switch; for the cold reboot (d),
a new instance that has loaded the same state (its seed) from its snapshot.

Results: build/bench/results.json, and (unless --no-docs) docs/benchmarks.md
and docs/benchmarks.svg, from the same run, with the command that made them.
"""

from __future__ import annotations

import argparse
import bisect
import dataclasses
import hashlib
import itertools
import json
import random
import socket
import statistics
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.vm import image as vmimage
from tests.vm import vm

GUEST_PORT = 7796
MIB = 1 << 20
OUT = vmimage.BUILD / "bench"
DOCS = vmimage.REPO / "docs"
# TCG's translation buffer at 256 MiB instead of 1 GiB, as for the VM tests (vm.Machine.accel;
# named here too, since the figures depend on it). With it the kexec'd kernel and initramfs
# took 4 to 8 s, as a cold boot does; without, 4 to 49 s; but CPU-heavy user space (CRIU's
# restore, the checksums) took 1.7 x as long (docs/benchmarks.md).
ACCEL = "tcg,tb-size=256"
# Guest RAM and reservation: room for the largest state twice (service + images).
MACHINES = {
    64: vm.Machine("2560M", "memmap=512M!1536M", accel=ACCEL),
    256: vm.Machine("3072M", "memmap=1G!1536M", accel=ACCEL),
    # Above 3 GiB QEMU puts the RAM past 4 GiB (the PCI hole below): the range goes there.
    1024: vm.Machine("6144M", "memmap=2560M!4G", accel=ACCEL),
}


# Console lines that mark where the outage goes (the host's time of reading them).
MARKS = {
    "kexec_core: Starting new kernel": "kexec",
    "reboot: Restarting system": "reboot",
    vm.QEMU_EXITED: "qemu_exited",
    vm.QEMU_STARTED: "qemu_started",
    "Linux version": "kernel",
    "Run /init as init process": "initramfs",
    "running in system mode": "systemd",
    # A file system that was not clean at the switch: its journal replayed at mount.
    "recovery complete": "fs_recovery",
}
# The outage, phase by phase: (name, the mark that ends it); each starts where the one before ended.
PHASES = (
    ("stop", ("kexec", "qemu_exited")),
    ("kernel", ("initramfs",)),
    ("initramfs", ("systemd",)),
)


def phases(marks: list[tuple[float, str]], last_before: float, first_after: float) -> dict[str, float]:
    """How the outage [LAST_BEFORE, FIRST_AFTER] splits: stopping, the kernel, the initramfs, user space."""
    inside = [(t, m) for t, m in marks if last_before <= t <= first_after]
    out: dict[str, float] = {}
    start = last_before
    for name, ends in PHASES:
        end = next((t for t, m in inside if m in ends and t >= start), None)
        if end is None:
            return out
        out[name] = round(end - start, 3)
        start = end
    out["user_space"] = round(first_after - start, 3)
    return out


POOL = (64 << 10) + 8


def block_bytes(seed: int, i: int, v: int) -> bytes:
    """What block I at version V of a state with SEED holds (the same as bench_state.py)."""
    pool = random.Random(seed * 2**40 + i * 2**20 + v).randbytes(POOL)
    return (pool * (MIB // POOL + 1))[:MIB]


def _request(sock: socket.socket, reader: Any, line: str) -> dict[str, Any]:
    sock.sendall(line.encode() + b"\n")
    answer = reader.readline()
    if not answer:
        raise ConnectionError("closed")
    return dict(json.loads(answer))


class Prober(threading.Thread):
    """GET every 10 ms on a connection re-opened after any failure; each probe is (time, token or None)."""

    def __init__(self, port: int) -> None:
        super().__init__(daemon=True)
        self.port = port
        self.probes: list[tuple[float, str | None]] = []
        self.stop = threading.Event()

    def run(self) -> None:
        sock: socket.socket | None = None
        reader: Any = None
        while not self.stop.is_set():
            t = time.time()
            token = None
            try:
                if sock is None:
                    sock = socket.create_connection(("127.0.0.1", self.port), timeout=0.5)
                    reader = sock.makefile("r")
                got = _request(sock, reader, "GET")
                # "TOKEN SEED": which instance answered, and which state it holds.
                token = f"{got['token']} {got.get('seed', '')}".strip()
            except Exception:  # any failure is a failed probe; the prober never stops
                if sock is not None:
                    sock.close()
                sock = None
            self.probes.append((t, token))
            time.sleep(max(0.0, t + 0.01 - time.time()))


CACHE_READS = 2000


def cache_probe(port: int) -> dict[str, Any]:
    """The service's read latency of its file (READS): how warm its page cache is."""
    at = time.time()
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=120) as sock:
            got = _request(sock, sock.makefile("r"), f"READS {CACHE_READS}")
    except (OSError, ValueError) as e:
        return {"error": repr(e), "at": at}
    return {**got, "at": at, "seconds": round(time.time() - at, 3)}


def full_state(port: int, seed: int, size: int, deadline: float = 1800.0) -> dict[str, Any]:
    """Fetch every block's digest and check it; how long it took, how many were wrong, what failed.

    A request that fails (a timeout, the connection closed) is noted and
    asked again on a new connection, as a client would: the 1 GiB runs of
    2026-12-06 lost their whole check to one such failure, which then looked
    like a check crawling at 5 s a block (docs/benchmarks.md).
    """
    t0 = time.time()
    bad = 0
    failures: list[dict[str, Any]] = []
    sock: socket.socket | None = None
    reader: Any = None
    i = 0
    try:
        while i < size and time.time() - t0 < deadline:
            try:
                if sock is None:
                    sock = socket.create_connection(("127.0.0.1", port), timeout=120)
                    reader = sock.makefile("r")
                got = _request(sock, reader, f"BLOCK {i}")
            except (OSError, ValueError, KeyError) as e:
                failures.append({"block": i, "error": repr(e), "after_s": round(time.time() - t0, 3)})
                if sock is not None:
                    sock.close()
                sock = None
                time.sleep(1)
                continue
            if hashlib.sha256(block_bytes(seed, i, int(got["v"]))).hexdigest() != got["sha256"]:
                bad += 1
            i += 1
    finally:
        if sock is not None:
            sock.close()
    return {
        "seconds": round(time.time() - t0, 3),
        "blocks": i,
        "bad": bad,
        "failures": failures[:20],
        "failed_requests": len(failures),
        "done_at": time.time(),
    }


# Console marks of the switch itself: the old kernel is gone (kexec), or the machine reboots.
SWITCH_MARKS = ("kexec", "reboot", "qemu_exited")


def switched_at(marks: list[tuple[float, str]], since: float) -> float | None:
    """When the console first showed the switch after SINCE (host time); None if not yet.

    An outage the prober sees is not enough: at 1 GiB, arm's trial dump froze
    the service for longer than any threshold short of a kexec (2026-12-06).
    """
    return next((t for t, m in list(marks) if t >= since and m in SWITCH_MARKS), None)


class Established(threading.Thread):
    """A connection kept open across the switch: one GET sent once the old kernel is gone, and its answer.

    start() it at the switch; it waits for the console to show the kexec (or reboot).
    """

    def __init__(self, port: int, marks: list[tuple[float, str]]) -> None:
        super().__init__(daemon=True)
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=30)
        self.reader = self.sock.makefile("r")
        _request(self.sock, self.reader, "GET")
        self.marks = marks
        self.since = 0.0
        self.result: dict[str, Any] = {}

    def run(self) -> None:
        while switched_at(self.marks, self.since) is None:
            if time.time() - self.since > 900:
                self.result = {"error": "no switch seen"}
                return
            time.sleep(0.05)
        self.sock.settimeout(600)
        sent = time.time()
        try:
            token = _request(self.sock, self.reader, "GET")["token"]
            self.result = {"sent": sent, "answered": time.time(), "token": token}
        except (OSError, ValueError, KeyError) as e:
            self.result = {"sent": sent, "error": repr(e), "failed_at": time.time()}
        finally:
            self.sock.close()


@dataclasses.dataclass
class Run:
    step: int
    scenario: str
    size: int
    token: str = ""
    seed: int = 0
    estimate_bytes: int | None = None  # plan's estimate of the unit's images
    switch_at: float = 0.0  # host time of the bench-switch event
    after_at: float = 0.0  # ... and of bench-after (the guest is about to start the next run)
    switch: dict[str, str] = dataclasses.field(default_factory=dict)  # the kernels: from, to
    port_busy: dict[str, Any] | None = None  # the service's port still taken when the run started it
    established: Established | None = None
    cache: dict[str, Any] = dataclasses.field(default_factory=dict)  # the page-cache probes
    state: dict[str, Any] | None = None
    after: dict[str, Any] | None = None

    def ok(self, value: str) -> bool:
        return correct(value, self.scenario, self.token, self.seed)


def correct(value: str, scenario: str, token: str, seed: int) -> bool:
    """Whether a probe's "TOKEN SEED" is a correct answer in SCENARIO (see the module's doc)."""
    tok, _, got_seed = value.partition(" ")
    if scenario == "a":
        return True
    if scenario == "d":
        return got_seed == str(seed)
    return tok == token


def downtime(
    probes: list[tuple[float, str | None]], since: float, until: float, ok: Callable[[str], bool]
) -> dict[str, Any]:
    """The client's outage in [SINCE, UNTIL]: the longest stretch between two correct answers.

    Correct: an answer OK accepts. None if the service never answered
    correctly again before UNTIL (the stretch from the last correct answer to
    UNTIL is then the longest). Slow answers under load near the end of the
    run do not matter.
    """
    good = [t for t, tok in probes if tok is not None and ok(tok) and t <= until]
    start = max((t for t in good if t < since), default=since)
    after = [t for t in good if t >= start]
    if len(after) < 2:
        return {"last_before": start, "first_after": None, "seconds": None}
    last, first = max(itertools.pairwise(after), key=lambda g: g[1] - g[0])
    if until - after[-1] > first - last:
        return {"last_before": after[-1], "first_after": None, "seconds": None}
    return {"last_before": last, "first_after": first, "seconds": round(first - last, 3)}


def from_transitions(rows: list[list[Any]]) -> list[tuple[float, str | None]]:
    """Probes again from a run's recorded transitions: each streak's first and last probe."""
    out: list[tuple[float, str | None]] = []
    for n, (t, tok, count) in enumerate(rows):
        out.append((t, tok))
        if count > 1:
            end = rows[n + 1][0] - 0.01 if n + 1 < len(rows) else t + 0.01 * (count - 1)
            out.append((end, tok))
    return out


def _after_outage(
    probes: list[tuple[float, str | None]], since: float, outage: float
) -> list[tuple[float, str | None]] | None:
    """The probes after the first OUTAGE seconds without an answer since SINCE; None if none yet."""
    gone = None
    # The probes are in time order: start at SINCE (the checker asks every 50 ms,
    # and an hour of probes scanned from the start each time took a share of a host core).
    first = bisect.bisect_right(probes, since, key=lambda p: p[0])
    for n, (t, tok) in enumerate(probes[first:], first):
        if tok is not None:
            gone = None
            continue
        gone = t if gone is None else gone
        if t - gone >= outage:
            return probes[n + 1 :]
    return None


def outage_begun(probes: list[tuple[float, str | None]], since: float, outage: float = 2) -> bool:
    """Whether, after SINCE, the prober has had no answer for OUTAGE seconds."""
    return _after_outage(probes, since, outage) is not None


def transitions(probes: list[tuple[float, str | None]], since: float, until: float) -> list[list[Any]]:
    """The probes in [SINCE, UNTIL] as [time, token or None, how many in a row]: what the client saw."""
    out: list[list[Any]] = []
    for t, tok in probes:
        if since <= t <= until:
            if out and out[-1][1] == tok:
                out[-1][2] += 1
            else:
                out.append([round(t, 3), tok, 1])
    return out


def back_after_outage(
    probes: list[tuple[float, str | None]], since: float, ok: Callable[[str], bool], outage: float = 3
) -> bool:
    """Whether, after SINCE, the service was gone for OUTAGE seconds or more and then answered as OK wants.

    It keeps answering during the arm, and a slow answer there is no outage.
    """
    rest = _after_outage(probes, since, outage)
    first = next((tok for _, tok in rest if tok is not None), None) if rest is not None else None
    return first is not None and ok(first)


class Bench:
    def __init__(self, plan: list[dict[str, Any]]) -> None:
        self.port = vm.free_port()
        self.prober = Prober(self.port)
        self.runs = [Run(i, r["scenario"], r["size"]) for i, r in enumerate(plan)]
        self.checker: threading.Thread | None = None
        self.marks: list[tuple[float, str]] = []
        # The guest's bench-* events as the host saw them: where a run's wall-clock time goes.
        self.events: list[tuple[float, str, int | None]] = []

    def on_line(self, line: str, at: float) -> None:
        mark = next((m for text, m in MARKS.items() if text in line), None)
        if mark is not None:
            self.marks.append((at, mark))

    def on_event(self, ev: vm.Event) -> None:
        step = ev.data.get("step")
        if ev.name.startswith("bench-"):
            self.events.append((round(ev.at, 3), ev.name, step if isinstance(step, int) else None))
        run = self.runs[step] if isinstance(step, int) and 0 <= step < len(self.runs) else None
        if run is None:
            return
        if ev.name == "bench-ready":
            run.token, run.seed = ev.data["token"], int(ev.data["seed"])
            run.estimate_bytes = ev.data.get("estimate_bytes")
            run.established = Established(self.port, self.marks)
            run.cache["before"] = cache_probe(self.port)
        elif ev.name == "bench-switch":
            run.switch_at = ev.at
            run.switch = {k: str(ev.data[k]) for k in ("from", "to") if k in ev.data}
            if run.established is not None:
                run.established.since = ev.at
                run.established.start()
            self.checker = threading.Thread(target=self._check_state, args=(run,), daemon=True)
            self.checker.start()
        elif ev.name == "bench-after":
            run.after, run.after_at = ev.data, ev.at
        elif ev.name == "bench-port-busy":
            run.port_busy = ev.data

    def _check_state(self, run: Run) -> None:
        """Once the service answers correctly again: its page cache, its whole state, its page cache."""
        while True:
            time.sleep(0.05)
            # Only the outage of the switch itself (see switched_at), not a freeze of the arm before it.
            gone = switched_at(self.marks, run.switch_at)
            if gone is not None and back_after_outage(self.prober.probes, gone - 1, run.ok):
                break
            if time.time() - run.switch_at > 900:
                return
        run.cache["right_after"] = cache_probe(self.port)
        if run.scenario == "a":
            return  # nothing to check; the guest starts the next run soon
        try:
            run.state = full_state(self.port, run.seed, run.size)
        except (OSError, ValueError, KeyError) as e:
            run.state = {"error": repr(e)}
        run.cache["settled"] = cache_probe(self.port)

    def result(self, run: Run) -> dict[str, Any]:
        keep = run.scenario not in ("a", "d")
        down = downtime(self.prober.probes, run.switch_at, run.after_at or time.time(), run.ok)
        out: dict[str, Any] = {
            "step": run.step,
            "scenario": run.scenario,
            "size_mib": run.size,
            "token": run.token,
            "seed": run.seed,
            "client": down,
            "probes": transitions(self.prober.probes, run.switch_at - 2, run.after_at or time.time()),
        }
        est = run.established.result if run.established is not None else {}
        if est.get("answered") and down["first_after"]:
            est = {**est, "after_service_back": round(est["answered"] - down["first_after"], 3)}
        out["established"] = est
        until = run.after_at or time.time()
        out["marks"] = [[round(t, 3), m] for t, m in self.marks if run.switch_at - 2 <= t <= until]
        out["fs_recovery"] = any(m == "fs_recovery" for _, m in out["marks"])
        if down["first_after"]:
            out["phases"] = phases(self.marks, down["last_before"], down["first_after"])
        if run.state is not None and down["first_after"] and "done_at" in run.state:
            out["full_state"] = {
                **run.state,
                "after_last_answer": round(run.state["done_at"] - down["last_before"], 3),
            }
        else:
            out["full_state"] = run.state
        after = run.after or {}
        out["kept"] = keep and after.get("token") == run.token
        # (d): a new instance, with the whole state loaded from its snapshot.
        state_ok = bool(run.state and run.state.get("bad") == 0 and run.state.get("blocks") == run.size)
        out["reloaded"] = run.scenario == "d" and after.get("token") != run.token and state_ok
        out["port_busy"] = run.port_busy
        out["kernel_before"] = run.switch.get("from")
        out["kernel_to"] = run.switch.get("to")
        out["kernel_after"] = after.get("uname")
        out["page_cache"] = dict(run.cache)
        if down["first_after"] and "at" in run.cache.get("right_after", {}):
            out["page_cache"]["probed_after_back"] = round(
                run.cache["right_after"]["at"] - down["first_after"], 3
            )
        rep = after.get("report") or {}
        out["guest"] = {
            "seconds": rep.get("seconds"),
            "at": rep.get("at"),
            "units": [
                {k: u.get(k) for k in ("unit", "outcome", "image_bytes", "seconds", "lazy", "at")}
                for u in rep.get("units", [])
            ],
            "ram": {k: v for k, v in (rep.get("ram") or {}).items() if k not in ("ranges",)},
            "warm": rep.get("warm"),
            "images": rep.get("images"),
            "images_left_on_disk": after.get("images_left_on_disk"),
        }
        images = sum(u.get("image_bytes") or 0 for u in rep.get("units", []))
        out["estimate"] = {
            "planned_bytes": run.estimate_bytes,
            "image_bytes": images or None,
            "ratio": round(run.estimate_bytes / images, 3) if run.estimate_bytes and images else None,
        }
        return out


def run_bench(plan: list[dict[str, Any]], out: Path, machine: vm.Machine) -> dict[str, Any]:
    img = vmimage.build_image("bench", extra_files={"etc/seamless-test/bench.json": json.dumps(plan)})
    out.mkdir(parents=True, exist_ok=True)
    bench = Bench(plan)
    bench.prober.start()
    events: list[vm.Event] = []
    t0 = time.time()
    # Each run: a switch, and the state made and checked.
    deadline = time.monotonic() + vm.QEMU_TIMEOUT + sum(400 + 2 * r["size"] for r in plan)
    kernel_b = False  # the first boot: kernel A

    def on_event(ev: vm.Event) -> None:
        bench.on_event(ev)
        if ev.name == "bench-after":
            # What ran so far, should the run not end (results.json replaces it when it does).
            done = [bench.result(r) for r in bench.runs[: int(ev.data.get("step", 0)) + 1]]
            partial = {"plan": plan, "host_seconds": round(time.time() - t0, 1), "runs": done}
            (out / "partial.json").write_text(json.dumps(partial, indent=1) + "\n")

    try:
        for n in itertools.count(1):
            vm.boot(
                img,
                out / f"console-{n}.log",
                events,
                set(),
                machine=machine,
                forwards={bench.port: GUEST_PORT},
                on_event=on_event,
                timeout=max(60.0, deadline - time.monotonic()),
                kernel_b=kernel_b,
                on_line=bench.on_line,
            )
            # QEMU ended. A cold reboot (d) goes on in a new QEMU, as a machine's firmware would.
            last = next((e for e in reversed(events) if e.name.startswith("bench-")), None)
            step = last.data.get("step") if last is not None else None
            cold = (
                last is not None
                and last.name == "bench-switch"
                and isinstance(step, int)
                and plan[step]["scenario"] == "d"
            )
            if not cold:
                break
            kernel_b = last is not None and last.data.get("to") == vmimage.KERNEL_B
    except TimeoutError as e:
        events.append(vm.Event("error", {"error": str(e)}, time.time()))
    finally:
        bench.prober.stop.set()
    results = {
        "plan": plan,
        "machine": dataclasses.asdict(machine),
        "kernels": [vmimage.KERNEL_A, vmimage.KERNEL_B],
        "host_seconds": round(time.time() - t0, 1),
        "done": any(e.name == "bench-done" for e in events),
        "errors": [e.data for e in events if e.name in ("error", "bench-error")],
        "runs": [bench.result(r) for r in bench.runs],
        # Every console mark and guest event of the whole run, in order (the cost of each step).
        "timeline": sorted(
            [[round(t, 3), m, None] for t, m in bench.marks] + [list(e) for e in bench.events],
            key=lambda e: e[0],
        ),
    }
    (out / "results.json").write_text(json.dumps(results, indent=1) + "\n")
    return results


def summary(results: dict[str, Any]) -> list[dict[str, Any]]:
    """Per scenario and size: median, min and max client downtime, and the ratio to (a)'s median."""
    rows = []
    groups: dict[tuple[str, int], list[dict[str, Any]]] = {}
    for r in results["runs"]:
        groups.setdefault((r["scenario"], r["size_mib"]), []).append(r)
    floor = {
        size: statistics.median(d)
        for (sc, size), rs in groups.items()
        if sc == "a"
        if (d := [r["client"]["seconds"] for r in rs if r["client"]["seconds"] is not None])
    }
    for (sc, size), rs in sorted(groups.items(), key=lambda x: (x[0][1], x[0][0])):
        downs = [r["client"]["seconds"] for r in rs if r["client"]["seconds"] is not None]
        full = [
            r["full_state"]["after_last_answer"]
            for r in rs
            if (r.get("full_state") or {}).get("after_last_answer")
        ]
        est = [r["established"]["after_service_back"] for r in rs if "after_service_back" in r["established"]]
        planned = [x for r in rs if (x := (r.get("estimate") or {}).get("ratio"))]
        split = {
            name: statistics.median(xs)
            for name in [p for p, _ in PHASES] + ["user_space"]
            if (xs := [r["phases"][name] for r in rs if name in (r.get("phases") or {})])
        }
        med = statistics.median(downs) if downs else None
        rows.append(
            {
                "scenario": sc,
                "size_mib": size,
                "runs": len(rs),
                "downtime_median": med,
                "downtime_min": min(downs, default=None),
                "downtime_max": max(downs, default=None),
                "ratio_to_a": round(med / floor[size], 2) if med and floor.get(size) else None,
                "full_state_median": statistics.median(full) if full else None,
                "established_median": statistics.median(est) if est else None,
                "estimate_ratio_median": statistics.median(planned) if planned else None,
                "phases_median": split,
                "page_cache_median": cache_medians(rs),
                "guest_median": guest_medians(rs),
                "kept": all(r["kept"] for r in rs) if sc not in ("a", "d") else None,
                "reloaded": all(r.get("reloaded") for r in rs) if sc == "d" else None,
            }
        )
    return rows


def cache_medians(runs: list[dict[str, Any]]) -> dict[str, float]:
    """Medians of the page-cache probes' p50 and p99 (µs), and of the p99 right after over before."""
    out: dict[str, float] = {}
    for when in ("before", "right_after", "settled"):
        for q in ("p50_us", "p99_us"):
            xs = [p[q] for r in runs if q in (p := (r.get("page_cache") or {}).get(when) or {})]
            if xs:
                out[f"{when}_{q}"] = statistics.median(xs)
    ratios = [
        c["right_after"]["p99_us"] / c["before"]["p99_us"]
        for r in runs
        if "p99_us" in (c := r.get("page_cache") or {}).get("right_after", {})
        and c.get("before", {}).get("p99_us")
    ]
    if ratios:
        out["p99_ratio"] = round(statistics.median(ratios), 2)
    return out


# verdict_wait, address_wait and criu: parts of restore (its unit's verdict awaited, the network's
# addresses awaited, criu restore itself).
GUEST_FIGURES = (
    "frozen",
    "checkpoint",
    "checksum",
    "verify",
    "restore",
    "verdict_wait",
    "address_wait",
    "criu",
)


def guest_medians(runs: list[dict[str, Any]]) -> dict[str, float]:
    """Medians of what the guest's report says of the kept unit: seconds per step, image MiB."""
    out: dict[str, float] = {}
    units = [u for r in runs for u in (r.get("guest") or {}).get("units", [])[:1]]
    for key in GUEST_FIGURES:
        xs = [u["seconds"][key] for u in units if (u.get("seconds") or {}).get(key) is not None]
        if xs:
            out[key] = statistics.median(xs)
    sizes = [u["image_bytes"] / MIB for u in units if u.get("image_bytes")]
    if sizes:
        out["image_mib"] = round(statistics.median(sizes), 1)
    for key, xs in boot_steps(runs).items():
        out[key] = statistics.median(xs)
    return out


# The new boot up to the restore, from the guest's clock (its report's "at"): each step from the one before.
BOOT_STEPS = (
    ("to_prepare", "kernel_started", "prepare_exec"),  # kernel, initramfs, systemd up to seamless-restore
    ("prepare_python", "prepare_exec", "prepare_started"),  # its Python started, its imports
    ("prepare_checks", "prepare_started", "images_checked"),  # the locks, the images' checks, the dentries
    # systemd starts the unit's restore, at READY=1 (the checks go on beside it); before
    # seamless-restore.service was Type=notify, once the checks were done.
    ("to_restore", "prepare_ready", "restore_exec"),
    ("restore_python", "restore_exec", "restore_started"),
)


def boot_steps(runs: list[dict[str, Any]]) -> dict[str, list[float]]:
    """Per step of BOOT_STEPS, its seconds in each run whose report has both ends."""
    out: dict[str, list[float]] = {}
    for r in runs:
        g = r.get("guest") or {}
        at = dict(g.get("at") or {})
        units = g.get("units") or []
        if units:
            at.update((units[0].get("at") or {}).items())
        # A report from before READY=1: the oneshot was ready when its checks were done.
        at["prepare_ready"] = at.get("prepare_ready") or at.get("images_checked")
        for key, start, end in BOOT_STEPS:
            if at.get(start) and at.get(end):
                out.setdefault(key, []).append(round(at[end] - at[start], 3))
    return out


def make_plan(sizes: list[int], scenarios: str, reps: int) -> list[dict[str, Any]]:
    """The runs: every scenario at every size, but SCENARIO@SIZE only at that size (an on/off figure).

    Interleaved: rep 1 of every scenario, then rep 2, ... (drift hits all alike),
    every second rep in the reverse order. The guest switches to the other
    kernel in each run, so a run's place says its direction (A -> B first);
    the reversal gives each scenario both directions in any two reps in a row.
    """
    wanted: list[tuple[str, int | None]] = []
    for word in scenarios.split(","):
        name, _, at = word.partition("@")
        if at and int(at) not in sizes:
            raise SystemExit(f"{word}: {at} MiB is not among --sizes {','.join(map(str, sizes))}")
        wanted.append((name, int(at) if at else None))
    return [
        {"scenario": sc, "size": size}
        for size in sizes
        for rep in range(reps)
        for sc, at in (wanted if rep % 2 == 0 else wanted[::-1])
        if at in (None, size)
    ]


def plan_command(plan: list[dict[str, Any]]) -> str:
    """The command that makes PLAN (make_plan's inverse), for a run's docs."""
    sizes = sorted({p["size"] for p in plan})
    words = []
    for sc in dict.fromkeys(p["scenario"] for p in plan):
        at = sorted({p["size"] for p in plan if p["scenario"] == sc})
        words += [sc] if at == sizes else [f"{sc}@{size}" for size in at]
    per = {(p["scenario"], p["size"]) for p in plan}
    reps = len(plan) // max(1, len(per))
    sizes_arg, scenarios_arg = ",".join(map(str, sizes)), ",".join(words)
    return f"python3 -m tests.vm.bench --sizes {sizes_arg} --scenarios {scenarios_arg} --reps {reps}"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python3 -m tests.vm.bench")
    ap.add_argument("--sizes", default="64", help="state sizes in MiB, comma separated")
    ap.add_argument(
        "--scenarios",
        default="a,b,b-ram",
        help="comma separated; SCENARIO@SIZE runs it only at that size (e.g. b-nopre@256)",
    )
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--out", type=Path, default=OUT)
    ap.add_argument("--no-docs", action="store_true")
    ap.add_argument(
        "--recompute",
        type=Path,
        metavar="RESULTS",
        help="no run: the client figures again from RESULTS' recorded probes, and the docs from them",
    )
    args = ap.parse_args(argv)
    if args.recompute:
        return recompute(args.recompute, args.no_docs)
    sizes = [int(s) for s in args.sizes.split(",")]
    plan = make_plan(sizes, args.scenarios, args.reps)
    machine = MACHINES[min((m for m in MACHINES if m >= max(sizes)), default=max(MACHINES))]
    results = run_bench(plan, args.out, machine)
    rows = summary(results)
    results["summary"] = rows
    (args.out / "results.json").write_text(json.dumps(results, indent=1) + "\n")
    for row in rows:
        print(json.dumps(row))
    if not args.no_docs:
        command = "python3 -m tests.vm.bench " + " ".join(argv if argv is not None else sys.argv[1:])
        write_docs(results, rows, command.strip())
    return 0 if results["done"] and not results["errors"] else 1


def recompute(path: Path, no_docs: bool) -> int:
    """The client downtimes of a run again from its recorded probe transitions, then the summary."""
    results = json.loads(path.read_text())
    for r in results["runs"]:
        rows = r.get("probes") or []
        if not rows:
            continue
        token = r.get("token") or next((tok for _, tok, _ in rows if tok), "")
        scenario, seed = r["scenario"], int(r.get("seed") or 0)
        since, until = rows[0][0] + 2, rows[-1][0] + 0.01 * rows[-1][2]
        r["client"] = downtime(from_transitions(rows), since, until, Run(0, scenario, 0, token, seed).ok)
        if r.get("marks") and r["client"]["first_after"]:
            marks = [(float(t), str(m)) for t, m in r["marks"]]
            r["phases"] = phases(marks, r["client"]["last_before"], r["client"]["first_after"])
        est = r.get("established") or {}
        if est.get("answered") and r["client"]["first_after"]:
            est["after_service_back"] = round(est["answered"] - r["client"]["first_after"], 3)
        elif "after_service_back" in est:
            del est["after_service_back"]
        fs = r.get("full_state") or {}
        if "done_at" in fs and r["client"]["first_after"]:
            fs["after_last_answer"] = round(fs["done_at"] - r["client"]["last_before"], 3)
    results["summary"] = summary(results)
    results["recomputed"] = "client figures recomputed from the recorded probe transitions"
    path.write_text(json.dumps(results, indent=1) + "\n")
    for row in results["summary"]:
        print(json.dumps(row))
    if not no_docs:
        write_docs(results, results["summary"], plan_command(results["plan"]))
    return 0


def write_docs(results: dict[str, Any], rows: list[dict[str, Any]], command: str) -> None:
    from tests.vm import bench_docs

    bench_docs.write(results, rows, command, DOCS / "benchmarks.md", DOCS / "benchmarks.svg")


if __name__ == "__main__":
    raise SystemExit(main())
