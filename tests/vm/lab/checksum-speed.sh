#!/bin/sh
# Lab: which checksum costs the emulated CPU least (the pages' check in the
# restore, seamless_systemd/imagesums.py). 128 MiB of random bytes in tmpfs,
# hashed in 1 MiB slices: read with pread (a copy) or through mmap (none),
# with zlib and hashlib's algorithms, on one thread and on every CPU.
# python3 -m tests.vm.vm lab tests/vm/lab/checksum-speed.sh
python3 - <<'PY'
import concurrent.futures, hashlib, mmap, os, time, zlib
MIB = 1 << 20
N = 128
path = "/dev/shm/sums"
with open(path, "wb") as f:
    for _ in range(N):
        f.write(os.urandom(MIB))
fd = os.open(path, os.O_RDONLY)
m = mmap.mmap(fd, N * MIB, prot=mmap.PROT_READ)
view = memoryview(m)
flags = open("/proc/cpuinfo").read().split("flags")[1].split("\n")[0]
print("cpu flags of note:", [f for f in ("sse4_2", "pclmulqdq", "avx2", "sha_ni", "aes") if f in flags.split()])

def zsum(fn, lo, hi, via):
    s = 0
    for i in range(lo, hi):
        buf = os.pread(fd, MIB, i * MIB) if via == "pread" else view[i * MIB:(i + 1) * MIB]
        s = fn(buf, s)
    return s

def hsum(name, lo, hi, via):
    h = hashlib.new(name)
    for i in range(lo, hi):
        h.update(os.pread(fd, MIB, i * MIB) if via == "pread" else view[i * MIB:(i + 1) * MIB])
    return h.hexdigest()

def run(label, fn, threads=1):
    t0 = time.perf_counter()
    if threads == 1:
        fn(0, N)
    else:
        step = N // threads
        with concurrent.futures.ThreadPoolExecutor(threads) as ex:
            list(ex.map(lambda k: fn(k * step, (k + 1) * step), range(threads)))
    dt = time.perf_counter() - t0
    print(f"{label:28} {dt:6.2f} s  {N / dt:7.1f} MiB/s")

run("read only (pread)", lambda a, b: [os.pread(fd, MIB, i * MIB) for i in range(a, b)])
run("read only (mmap, touch)", lambda a, b: [view[i * MIB:(i + 1) * MIB].tobytes()[:1] for i in range(a, b)])
for via in ("pread", "mmap"):
    run(f"crc32 {via}", lambda a, b: zsum(zlib.crc32, a, b, via))
    run(f"adler32 {via}", lambda a, b: zsum(zlib.adler32, a, b, via))
for name in ("md5", "sha1", "sha256", "blake2b", "blake2s"):
    run(f"{name} mmap", lambda a, b: hsum(name, a, b, "mmap"))
ncpu = os.cpu_count() or 1
run(f"crc32 pread x{ncpu}", lambda a, b: zsum(zlib.crc32, a, b, "pread"), ncpu)
run(f"crc32 mmap x{ncpu}", lambda a, b: zsum(zlib.crc32, a, b, "mmap"), ncpu)
run(f"adler32 mmap x{ncpu}", lambda a, b: zsum(zlib.adler32, a, b, "mmap"), ncpu)
run(f"sha1 mmap x{ncpu}", lambda a, b: hsum("sha1", a, b, "mmap"), ncpu)
PY
