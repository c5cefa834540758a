#!/bin/sh
# Lab: a DynamicUser= unit under CRIU 4.1.1: what systemd tells of its UID
# (also to an ExecStart=+ command, as restore-unit is), whether the UID is the
# same after a restart, and whether a dump and a restore keep NoNewPrivs and
# the seccomp filter.
criu --version
U=seamless-dynamic.service
systemctl start $U
sleep 2
PID=$(systemctl show -p MainPID --value $U)
echo "== running: UID property $(systemctl show -p UID,GID --value $U | tr '\n' ' ')"
grep -E "^(Uid|Gid|NoNewPrivs|Seccomp|Seccomp_filters):" /proc/$PID/status
ls -la /run/systemd/dynamic-uid/ 2>&1 | head
systemctl restart $U; sleep 2
echo "== after restart: UID property $(systemctl show -p UID --value $U)"
mkdir -p /run/systemd/system
cat > /run/systemd/system/probe-dyn.service <<'UNIT'
[Service]
Type=oneshot
RemainAfterExit=yes
DynamicUser=yes
ExecStart=+/bin/sh -c 'id > /run/probe-dyn; systemctl show -p UID,GID --value probe-dyn.service >> /run/probe-dyn'
UNIT
systemctl daemon-reload
systemctl start probe-dyn.service
echo "== an ExecStart=+ command of a DynamicUser unit sees"; cat /run/probe-dyn
echo "== after start: UID property $(systemctl show -p UID --value probe-dyn.service)"
PID=$(systemctl show -p MainPID --value $U)
echo "== trial dump (leave running)"
python3 -c "
from pathlib import Path
from seamless_systemd import criu, systemd
f = criu.inspect(systemd.unit_info('$U'))
print('problems', getattr(f, 'problems', '?'))
criu.dump(f, Path('/tmp/trial'), Path('/tmp/trial.log'), leave_running=True, timeout=300)
print('trial dump ok')
" 2>&1 | tail -5
grep -E "Error|seccomp" /tmp/trial.log | tail -8
