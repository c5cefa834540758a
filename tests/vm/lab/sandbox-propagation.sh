#!/bin/sh
# Lab: which host mounts reach a sandboxed unit's mount namespace once a podman
# container starts after it, and which of them seamless-upgrade leaves out of
# the dump (sandbox.runtime_mounts)?
systemctl start seamless-sandboxed-rw.service
podman import /usr/local/lib/seamless-test/ctr-rootfs.tar localhost/seamless-py >/dev/null
systemctl start seamless-podman.service
sleep 2
PID=$(systemctl show -p MainPID --value seamless-sandboxed-rw.service)
echo "== sandbox $PID mountinfo"
cut -d' ' -f1-7,9 "/proc/$PID/mountinfo"
echo "== host mountinfo"
cut -d' ' -f1-7,9 /proc/1/mountinfo
echo "== left out"
python3 -c "
from seamless_systemd import sandbox, systemd, procs
pid = $PID
host = {(m.point, m.dev, m.root) for m in procs.mounts('self')}
for m in procs.mounts(pid):
    if (m.point, m.dev, m.root) in host:
        print('host mount', m.point, systemd.mount_unit_name(m.point), systemd.runtime_mounts([m.point]))
print(sandbox.runtime_mounts(pid, 'seamless-sandboxed-rw.service'))
"
echo "== trial dump of the sandboxed unit, the container running beside it"
python3 -c "
from pathlib import Path
from seamless_systemd import criu, systemd
f = criu.inspect(systemd.unit_info('seamless-sandboxed-rw.service'))
print('skip', f.skip_mounts)
criu.dump(f, Path('/tmp/trial'), Path('/tmp/trial.log'), leave_running=True, timeout=300)
print('trial dump ok')
"
grep -E "Error" /tmp/trial.log | tail -5
