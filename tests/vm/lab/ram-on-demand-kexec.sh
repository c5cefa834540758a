#!/bin/sh
# Lab: RAM on demand across a kexec (docs/ram-on-demand.md), two boots.
# Boot A: 128 MiB of hugetlb pages taken at run time, ext4 on /dev/nbd0 served
# from them, files written; kexec -l with --mem-min/--mem-max outside the
# pages and memmap= for exactly their ranges, then systemctl kexec.
# Boot B: the ranges as /dev/pmemN, a dm-linear table over them in physical
# order, the same ext4 mounted read-only, the files compared.
# python3 -m tests.vm.vm lab tests/vm/lab/ram-on-demand-kexec.sh
STATE=/var/lib/seamless-lab
mkdir -p "$STATE"
if [ ! -e "$STATE/kexeced" ]; then
	{
		modprobe nbd nbds_max=2 || exit 1
		mkdir -p /run/seamless-lab-huge
		mount -t hugetlbfs -o pagesize=2M,mode=0700 none /run/seamless-lab-huge || exit 1
		python3 - <<'PY'
import hashlib, json, mmap, os, subprocess, time
from pathlib import Path
from seamless_systemd import hugemem, nbd

MIB = 1 << 20
t0 = time.monotonic()
taken = hugemem.take(Path("/run/seamless-lab-huge"), 128 * MIB, 2 * MIB)
print(f"A: took {taken.size >> 20} MiB in {len(taken.ranges)} ranges ({time.monotonic() - t0:.2f} s)")
fd = os.open(taken.path, os.O_RDWR)
mem = mmap.mmap(fd, taken.size, mmap.MAP_SHARED)
dev = nbd.Device("/dev/nbd0", nbd.Store(mem, taken.page, taken.layout()))
subprocess.run(["mkfs.ext4", "-q", "-F", "-O", "^has_journal", "-L", "seamless-lab", "/dev/nbd0"], check=True)
os.makedirs("/mnt/lab", exist_ok=True)
subprocess.run(["mount", "/dev/nbd0", "/mnt/lab"], check=True)
blob = os.urandom(64 * MIB)
Path("/mnt/lab/blob").write_bytes(blob)
Path("/mnt/lab/note").write_text(f"written in {os.uname().release}\n")
subprocess.run(["umount", "/mnt/lab"], check=True)
dev.close()
mem.close()
os.close(fd)
# kexec's own segments go into the largest stretch of System RAM free of the ranges.
window = hugemem.kexec_window(taken.ranges, hugemem.system_ram(Path("/proc/iomem").read_text()))
lo, hi = window.start, window.end
cmdline = " ".join(w for w in Path("/proc/cmdline").read_text().split() if not w.startswith("BOOT_IMAGE="))
cmdline += " " + hugemem.memmap_arg(taken.ranges)
print(f"A: kexec window {lo:#x}-{hi:#x} ({(hi - lo) >> 20} MiB); command line {len(cmdline)} bytes")
kernel = sorted(Path("/boot").glob("vmlinuz-*"))[-1]
initrd = Path(str(kernel).replace("vmlinuz", "initrd.img"))
subprocess.run(["kexec", "-l", str(kernel), f"--initrd={initrd}", f"--mem-min={lo:#x}", f"--mem-max={hi - 1:#x}",
                f"--command-line={cmdline}"], check=True)
state = {"ranges": [[r.start, r.length] for r in taken.ranges], "sha256": hashlib.sha256(blob).hexdigest(),
         "kernel_a": os.uname().release, "kexec_e": time.time()}
Path("/var/lib/seamless-lab/state.json").write_text(json.dumps(state))
print(f"A: loaded {kernel.name}; pages stay in the hugetlb pool across the shutdown")
PY
	} > "$STATE/boot-a.log" 2>&1 || { cat "$STATE/boot-a.log"; exit 1; }
	cat "$STATE/boot-a.log" > /dev/ttyS0
	touch "$STATE/kexeced"
	sync
	systemctl kexec
	sleep 600  # the driver must not power off meanwhile
	exit 1
fi
cat "$STATE/boot-a.log"
modprobe nd_e820 2>/dev/null
modprobe nd_pmem 2>/dev/null
udevadm settle
exec python3 - <<'PY'
import hashlib, json, subprocess, time
from pathlib import Path
from seamless_systemd import hugemem

st = json.loads(Path("/var/lib/seamless-lab/state.json").read_text())
print(f"B: kernel {Path('/proc/sys/kernel/osrelease').read_text().strip()}, "
      f"{time.time() - st['kexec_e']:.1f} s after A loaded the kernel")
devs = {}
for res in Path("/sys/block").glob("pmem*/device/resource"):
    devs[int(res.read_text(), 16)] = "/dev/" + res.parent.parent.name
ranges = [hugemem.Range(s, n) for s, n in st["ranges"]]
table = hugemem.dm_table(ranges, devs)
for r in ranges:
    dev = devs[r.start]
    size = int(subprocess.run(["blockdev", "--getsize64", dev], capture_output=True, text=True).stdout)
    if size != r.length:
        raise SystemExit(f"B: {dev} is {size} bytes, the range was {r.length}")
print(f"B: {len(ranges)} pmem devices found at the recorded addresses")
subprocess.run(["dmsetup", "create", "seamless-lab"], input=table, text=True, check=True)
Path("/mnt/lab").mkdir(parents=True, exist_ok=True)
subprocess.run(["mount", "-o", "ro", "/dev/mapper/seamless-lab", "/mnt/lab"], check=True)
same = hashlib.sha256(Path("/mnt/lab/blob").read_bytes()).hexdigest() == st["sha256"]
print(f"B: {Path('/mnt/lab/note').read_text().strip()}; 64 MiB blob {'the same' if same else 'DIFFERENT'}")
subprocess.run(["umount", "/mnt/lab"], check=True)
subprocess.run(["dmsetup", "remove", "seamless-lab"], check=True)
raise SystemExit(0 if same else 1)
PY
