#!/bin/sh
# Lab: a podman container run by a systemd unit the way 'podman generate
# systemd --new' writes it (conmon is the MainPID, Type=notify), on a bridge
# network with a published port. Checkpoint it to a file while the unit runs,
# then bring it back *inside the same unit* with a restore drop-in (Type=forking,
# PIDFile = the new conmon), as restore-unit would after a kexec.
t() { a=$(date +%s%N); "$@"; rc=$?; echo "[$(( ($(date +%s%N) - a) / 1000000 )) ms, rc $rc] $*"; return $rc; }
set -x
t podman import /usr/local/lib/seamless-test/ctr-rootfs.tar localhost/seamless-py; echo "import rc $?"
podman info --format '{{.Host.OCIRuntime.Name}} {{.Host.NetworkBackend}} {{.Host.CgroupManager}}'
cat > /etc/systemd/system/ctr-looper.service <<'UNIT'
[Unit]
Description=demo container
[Service]
Environment=PODMAN_SYSTEMD_UNIT=%n
Restart=on-failure
TimeoutStopSec=70
ExecStartPre=/bin/rm -f %t/%n.ctr-id
ExecStart=/usr/bin/podman run --cidfile=%t/%n.ctr-id --cgroups=no-conmon --rm --sdnotify=conmon -d --replace --name looper -p 7799:7799 localhost/seamless-py python3 /app/demo.py 7799 0.0.0.0
ExecStop=/usr/bin/podman stop --ignore --cidfile=%t/%n.ctr-id
ExecStopPost=/usr/bin/podman rm -f --ignore --cidfile=%t/%n.ctr-id
Type=notify
NotifyAccess=all
UNIT
systemctl daemon-reload
t systemctl start ctr-looper.service
systemctl status ctr-looper.service --no-pager | head -20
get() { python3 -c "
import socket,sys
s=socket.create_connection(('127.0.0.1',7799)); s.sendall(sys.argv[1].encode()+b'\n'); print(s.makefile().readline().strip()[:160])" "$1"; }
sleep 3
get INC; get INC
podman ps
podman inspect looper --format '{{.Id}} pid={{.State.Pid}} conmon={{.State.ConmonPid}} {{.State.Status}}'
cpid=$(podman inspect looper --format '{{.State.Pid}}')
mpid=$(podman inspect looper --format '{{.State.ConmonPid}}')
cat /proc/"$cpid"/cgroup /proc/"$mpid"/cgroup
tr '\0' ' ' < /proc/"$mpid"/cmdline; echo
t podman container checkpoint --leave-running --export /tmp/trial.tar looper; echo "trial rc $?"
get INC
t podman container checkpoint --export /tmp/ck.tar looper; echo "checkpoint rc $?"
ls -la /tmp/ck.tar
systemctl status ctr-looper.service --no-pager | head -12
podman ps -a
mkdir -p /run/systemd/system/ctr-looper.service.d
cat > /run/systemd/system/ctr-looper.service.d/50-restore.conf <<'UNIT'
[Service]
Type=forking
PIDFile=/run/lab-looper.pid
ExecStartPre=
ExecStart=
ExecStart=+/bin/sh -c 'podman container restore --import /tmp/ck.tar && podman inspect looper --format {{.State.ConmonPid}} > /run/lab-looper.pid && podman inspect looper --format {{.Id}} > /run/ctr-looper.service.ctr-id'
UNIT
systemctl daemon-reload
t systemctl start ctr-looper.service; echo "restore start rc $?"
systemctl status ctr-looper.service --no-pager | head -20
podman ps
get GET
rm -r /run/systemd/system/ctr-looper.service.d
systemctl daemon-reload
systemctl show ctr-looper.service -p Type -p MainPID -p ActiveState -p SubState
mpid=$(podman inspect looper --format '{{.State.ConmonPid}}'); cat /proc/"$mpid"/cgroup
t systemctl stop ctr-looper.service; echo "stop rc $?"
podman ps -a
systemctl start ctr-looper.service; sleep 3; get GET
journalctl -u ctr-looper.service --no-pager | tail -25
