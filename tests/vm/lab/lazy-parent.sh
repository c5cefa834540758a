#!/bin/sh
# Lab: a lazy restore of a dump built on pre-dump rounds, with packaging/criu's
# --lazy-parent-pages (docs/lazy-restore.md), on the guest's real kernel and CRIU.
# A process holds 256 MiB of random bytes and rewrites a few pages a second;
# round 0 (dump --leave-running --track-mem), round 1 (pre-dump), the final
# dump on round 1; then a lazy restore and an eager one of the same images,
# each timed, each checked by the process's own SHA-256 of its memory.
# python3 -m tests.vm.vm lab tests/vm/lab/lazy-parent.sh
criu --help | grep -q -- --lazy-parent-pages || { echo "this CRIU has no --lazy-parent-pages"; exit 1; }
exec python3 - <<'PY'
import hashlib, os, signal, subprocess, sys, time
from pathlib import Path

D = Path("/run/lab-lazy")
D.mkdir(exist_ok=True)
subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1200M", "lab-lazy", str(D)], check=True)
HOLDER = r'''
import hashlib, os, random, signal, sys, time
MIB = 1 << 20
mem = bytearray(os.urandom(256 * MIB))
def digest(*_):
    t = time.time()
    h = hashlib.sha256(mem).hexdigest()
    with open("/run/lab-lazy/digest.tmp", "w") as f:
        f.write(f"{h} {t} {time.time()}\n")
    os.rename("/run/lab-lazy/digest.tmp", "/run/lab-lazy/digest")
signal.signal(signal.SIGUSR1, digest)
writing = [True]
signal.signal(signal.SIGUSR2, lambda *_: writing.clear())  # still from now on: the digest holds
open("/run/lab-lazy/ready", "w").close()
r = random.Random(1)
while True:
    for _ in range(4 * bool(writing)):  # a few pages a second: something for the rounds to do
        i = r.randrange(len(mem) // 4096) * 4096
        mem[i:i + 8] = os.urandom(8)
    time.sleep(1)
'''
def step(t0, what):
    print(f"{time.monotonic() - t0:7.2f} s  {what}", flush=True)

def criu(*args, check=True):
    p = subprocess.run(["criu", *args], capture_output=True, text=True)
    if check and p.returncode != 0:
        print(f"criu {' '.join(args)} failed ({p.returncode}): {p.stderr[-2000:]}")
        for log in D.glob("**/*.log"):
            print(f"--- {log}"); print("\n".join(log.read_text(errors="replace").splitlines()[-25:]))
        sys.exit(1)
    return p

def ask_digest(pid):
    Path(D / "digest").unlink(missing_ok=True)
    os.kill(pid, signal.SIGUSR1)
    while not (D / "digest").exists():
        time.sleep(0.05)
    return (D / "digest").read_text().split()

def skipped(restore_log):
    """Pages the restore left to the lazy-pages daemon ("Lazy restore skips N pages" at -v4)."""
    import re
    return sum(int(m) for m in re.findall(r"Lazy restore skips (\d+) pages", restore_log.read_text(errors="replace")))

log = open(D / "holder.out", "w")
holder = subprocess.Popen([sys.executable, "-c", HOLDER], stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                          start_new_session=True)
while not (D / "ready").exists():
    time.sleep(0.2)
time.sleep(2)
t0 = time.monotonic()
pid = holder.pid
common = ["--tree", str(pid), "-v4"]
for d in ("pre-0", "pre-1", "final"):
    (D / d).mkdir(exist_ok=True)
criu("dump", *common, "-D", str(D / "pre-0"), "-o", "dump.log", "--leave-running", "--track-mem")
step(t0, "round 0")
time.sleep(2)
(D / "pre-1").mkdir(exist_ok=True)
criu("pre-dump", *common, "-D", str(D / "pre-1"), "-o", "dump.log", "--prev-images-dir", "../pre-0",
     "--track-mem", "--pre-dump-mode=read", "--auto-dedup", "--lazy-parent-pages")
step(t0, "round 1")
time.sleep(2)
os.kill(pid, signal.SIGUSR2)
time.sleep(1.5)
before = ask_digest(pid)[0]
(D / "final").mkdir(exist_ok=True)
criu("dump", *common, "-D", str(D / "final"), "-o", "dump.log", "--prev-images-dir", "../pre-1",
     "--track-mem", "--auto-dedup", "--lazy-parent-pages")
holder.wait()
step(t0, "final dump")
for mode in ("lazy", "eager", "lazy"):
    for f in ("restore.log", "lazy.log", "pid", "lazy-pages.socket"):
        (D / "final" / f).unlink(missing_ok=True)
    t1 = time.monotonic()
    extra = []
    if mode == "lazy":
        subprocess.run(["criu", "lazy-pages", "-D", str(D / "final"), "--work-dir", str(D / "final"),
                        "-o", "lazy.log", "-v4", "-d"], check=True)
        extra = ["--lazy-pages"]
    criu("restore", "-D", str(D / "final"), "-o", "restore.log", "-v4", "-d", "--pidfile",
         str(D / "final" / "pid"), *extra)
    restored = time.monotonic() - t1
    lazy_pages = skipped(D / "final" / "restore.log")
    rpid = int((D / "final" / "pid").read_text())
    got = ask_digest(rpid)
    whole = time.monotonic() - t1
    print(f"{mode:5}: restore {restored:5.2f} s, whole memory hashed by the process {whole:5.2f} s after "
          f"the start, digest {'SAME' if got[0] == before else 'DIFFERENT'}, {lazy_pages * 4 >> 10} MiB left lazy",
          flush=True)
    os.kill(rpid, signal.SIGKILL)
    time.sleep(1)
    subprocess.run(["pkill", "-f", "criu lazy-pages"])
    if mode == "lazy":
        tail = (D / "final" / "lazy.log").read_text(errors="replace").splitlines()
        print("  lazy-pages' log ends:", tail[-2:], "errors:", [l for l in tail if "Error" in l][:3])
PY
