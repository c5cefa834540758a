#!/bin/sh
# Lab: why a kexec'd boot is slower than a cold one under TCG (docs/benchmarks.md).
# Five boots in one QEMU run: the cold one, then four plain kexecs (kexec -l,
# the running kernel, its command line; no services kept). Each boot notes,
# from its kernel log and by measuring: the kernel's unpacking of the
# initramfs, /init to virtio_blk's probe, systemd's first steps after the
# switch to the root file system, a CPU loop, and reads from the disk that
# bypass the page cache. The last boot prints the table.
# python3 -m tests.vm.vm lab tests/vm/lab/kexec-boots.sh
STATE=/var/lib/seamless-lab
mkdir -p "$STATE"
n=$(cat "$STATE/boots" 2>/dev/null || echo 0)
python3 - "$n" >> "$STATE/table" <<'PY'
import re, subprocess, sys, time
n = int(sys.argv[1])
log = subprocess.run(["dmesg"], capture_output=True, text=True).stdout
def at(pattern):
    for line in log.splitlines():
        m = re.match(r"\[\s*(\d+\.\d+)\]\s*(.*)", line)
        if m and pattern in m.group(2):
            return float(m.group(1))
    return float("nan")
unpack = at("Freeing initrd memory") - at("Asymmetric key parser 'x509'")
probe = at("virtio_blk virtio1: 2/0/0") - at("Run /init")
t0 = time.perf_counter()
x = 0
for i in range(3_000_000):
    x += i * i
cpu = time.perf_counter() - t0
dd = subprocess.run(["dd", "if=/dev/vda", "of=/dev/null", "bs=1M", "count=256", "skip=1024", "iflag=direct"],
                    capture_output=True, text=True).stderr.strip().splitlines()[-1]
kind = "cold" if n == 0 else f"kexec {n}"
print(f"{kind:8} | unpack {unpack:6.1f} s | /init->virtio_blk {probe:6.1f} s | cpu loop {cpu:5.2f} s | {dd}")
PY
if [ "$n" -lt 4 ]; then
	echo $((n + 1)) > "$STATE/boots"
	kernel=/boot/vmlinuz-$(uname -r)
	kexec -l "$kernel" --initrd="/boot/initrd.img-$(uname -r)" --reuse-cmdline || exit 1
	sync
	systemctl kexec
	sleep 600  # the driver must not power off meanwhile
	exit 1
fi
cat "$STATE/table"
