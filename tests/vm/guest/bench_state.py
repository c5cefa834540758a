#!/usr/bin/python3
"""The benchmark's service: SIZE MiB of state in memory that a client can check.

bench_state.py PORT SIZE_MIB

The state is SIZE blocks of 1 MiB; block i at version v is a pool of
POOL random bytes from random.Random(seed * 2**40 + i * 2**20 + v),
repeated to 1 MiB, so a client that knows seed, i and v can tell whether
the block is right. The pool's length is not a multiple of 4 KiB: every
page of a block starts elsewhere in it, and a page lost, stale or moved
shows. A thread rewrites 1 % of the blocks every second (at least one) to
a new version, so that an incremental dump has something to do. One request per line:

  GET        {"token", "pid", "size_mib", "ready", "checked", "reads"}: token
             is random per start (a fresh start has a new one); checked counts
             the blocks BLOCK has hashed since the start, reads the READS
             answered (the guest's driver waits for the host's probes with them)
  BLOCK i    {"i", "v", "sha256"} of block i as it is now
  SEED       {"seed"}: what a client needs to check blocks
  READS n    {"n", "p50_us", "p99_us"}: n reads of 4 KiB at random offsets
             of the file BENCH_CACHE_FILE names (kept open), each timed:
             how warm its page cache is

With BENCH_WRITE_MIB_S=N (and BENCH_WRITE_FILE) it also writes N MiB a
second into a file of WRITE_FILE_MIB, round and round, never synced: dirty
page cache for the shutdown's sync (the early writeback's on/off figure).

With BENCH_SNAPSHOT=FILE in the environment (scenario d, the cold reboot)
it behaves like a database that persists its state: on SIGTERM it writes
seed, versions and every block to FILE (fsync'ed, renamed into place) and
exits; at start it loads FILE, if it holds a state of the same size,
instead of making a new one. It answers only once the state is whole.
"""

import hashlib
import json
import os
import random
import secrets
import signal
import socket
import sys
import threading
import time

MIB = 1 << 20
# 64 KiB and 8 bytes: page k of a block starts at (4096 k) mod POOL, different for each
# of its 256 pages. Making a whole 1 MiB from Random cost the emulated CPU some 0.1 s
# a block (100 s to start 1 GiB, and at 1 % a second a tenth of a CPU); this, a tenth.
POOL = (64 << 10) + 8


def block_bytes(seed: int, i: int, v: int) -> bytes:
    pool = random.Random(seed * 2**40 + i * 2**20 + v).randbytes(POOL)
    return (pool * (MIB // POOL + 1))[:MIB]


class State:
    def __init__(self, size: int, snapshot: str = "") -> None:
        self.seed = secrets.randbits(32)
        self.token = secrets.token_hex(8)
        self.size = size
        self.mem = bytearray(size * MIB)
        self.versions = [0] * size
        self.lock = threading.Lock()
        self.checked = 0
        self.reads_answered = 0
        self.ready = False
        self.snapshot = snapshot
        cache = os.environ.get("BENCH_CACHE_FILE")
        self.cache = os.open(cache, os.O_RDONLY) if cache and os.path.exists(cache) else None
        if not (snapshot and self.load(snapshot)):
            for i in range(size):
                self.mem[i * MIB : (i + 1) * MIB] = block_bytes(self.seed, i, 0)
        self.ready = True

    def load(self, path: str) -> bool:
        """The state from a snapshot of the same size; False if there is none."""
        try:
            with open(path, "rb") as f:
                head = json.loads(f.readline())
                if head.get("size") != self.size:
                    return False
                if f.readinto(self.mem) != len(self.mem):
                    return False
        except (OSError, ValueError):
            return False
        self.seed, self.versions = int(head["seed"]), list(head["versions"])
        print(f"loaded {self.size} MiB of state from {path}", flush=True)
        return True

    def save(self, *_: object) -> None:
        """SIGTERM: the whole state to the snapshot, on disk before exit."""
        with self.lock:
            tmp = self.snapshot + ".tmp"
            with open(tmp, "wb") as f:
                f.write(
                    (
                        json.dumps({"size": self.size, "seed": self.seed, "versions": self.versions}) + "\n"
                    ).encode()
                )
                f.write(self.mem)
                f.flush()
                os.fsync(f.fileno())
            os.rename(tmp, self.snapshot)
            print(f"saved {self.size} MiB of state to {self.snapshot}", flush=True)
        os._exit(0)

    def rewrite(self) -> None:
        """1 % of the blocks a second (at least one), each to its next version."""
        rng = random.Random()
        while True:
            time.sleep(1)
            for _ in range(max(1, self.size // 100) if self.size else 0):
                i = rng.randrange(self.size)
                v = self.versions[i] + 1
                data = block_bytes(self.seed, i, v)
                with self.lock:
                    self.mem[i * MIB : (i + 1) * MIB] = data
                    self.versions[i] = v

    def reads(self, n: int) -> dict:
        assert self.cache is not None
        pages = os.fstat(self.cache).st_size // 4096
        rng = random.Random()
        took = []
        for _ in range(max(1, min(n, 100000))):
            offset = rng.randrange(pages) * 4096
            t0 = time.perf_counter_ns()
            os.pread(self.cache, 4096, offset)
            took.append(time.perf_counter_ns() - t0)
        took.sort()
        return {
            "n": len(took),
            "p50_us": round(took[len(took) // 2] / 1000, 1),
            "p99_us": round(took[min(len(took) - 1, len(took) * 99 // 100)] / 1000, 1),
        }

    def answer(self, line: str) -> dict:
        words = line.split()
        if words[:1] == ["BLOCK"] and len(words) == 2 and words[1].isdigit() and int(words[1]) < self.size:
            i = int(words[1])
            with self.lock:
                digest = hashlib.sha256(self.mem[i * MIB : (i + 1) * MIB]).hexdigest()
                v = self.versions[i]
            self.checked += 1
            return {"i": i, "v": v, "sha256": digest}
        if words == ["SEED"]:
            return {"seed": self.seed}
        if words[:1] == ["READS"] and len(words) == 2 and words[1].isdigit() and self.cache is not None:
            got = self.reads(int(words[1]))
            self.reads_answered += 1
            return got
        return {
            "token": self.token,
            "seed": self.seed,
            "pid": os.getpid(),
            "size_mib": self.size,
            "ready": self.ready,
            "checked": self.checked,
            "reads": self.reads_answered,
        }


WRITE_FILE_MIB = 256


def write_on(path: str, mib_per_s: int) -> None:
    """MIB_PER_S MiB a second into PATH (WRITE_FILE_MIB, rewritten round and round), never synced."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    chunk = os.urandom(MIB)
    n = 0
    while True:
        t0 = time.monotonic()
        for _ in range(mib_per_s):
            os.pwrite(fd, chunk, (n % WRITE_FILE_MIB) * MIB)
            n += 1
        time.sleep(max(0.0, 1 - (time.monotonic() - t0)))


def serve(state: State, conn: socket.socket) -> None:
    with conn:
        reader = conn.makefile("r")
        for line in reader:
            conn.sendall((json.dumps(state.answer(line)) + "\n").encode())


def main() -> None:
    port, size = int(sys.argv[1]), int(sys.argv[2])
    snapshot = os.environ.get("BENCH_SNAPSHOT", "")
    state = State(size, snapshot)
    if snapshot:
        signal.signal(signal.SIGTERM, state.save)
    threading.Thread(target=state.rewrite, daemon=True).start()
    rate = int(os.environ.get("BENCH_WRITE_MIB_S") or 0)
    if rate > 0:
        where = os.environ.get("BENCH_WRITE_FILE", "/var/lib/seamless-bench/written.dat")
        threading.Thread(target=write_on, args=(where, rate), daemon=True).start()
    srv = socket.create_server(("0.0.0.0", port), backlog=64)
    while True:
        conn, _ = srv.accept()
        threading.Thread(target=serve, args=(state, conn), daemon=True).start()


if __name__ == "__main__":
    main()
