#!/bin/sh
# Lab: can podman (Debian bookworm) checkpoint a container to a file and restore
# it with this CRIU, in the guest? Installs podman from the network (QEMU's
# user-mode NAT). The container's root: the guest's /usr linked into
# a small tree, so that no image registry is needed.
set -x
echo "nameserver 10.0.2.3" > /etc/resolv.conf
export DEBIAN_FRONTEND=noninteractive
apt-get update -q >/dev/null
apt-get install -y -q --no-install-recommends podman runc conmon catatonit >/tmp/apt.log 2>&1
tail -3 /tmp/apt.log
podman --version; runc --version
R=/srv/ctr
mkdir -p $R/etc $R/proc $R/sys $R/dev $R/tmp $R/run $R/var/tmp
for l in bin lib lib64 sbin; do ln -s usr/$l $R/$l; done
cp /etc/passwd /etc/group /etc/hosts $R/etc/
# Hard links, not a bind mount: CRIU refuses a mount inside the container's
# root that the runtime does not know ("unreachable sharing").
cp -al /usr $R/usr
get() { python3 -c "
import socket,sys
s=socket.create_connection(('127.0.0.1',7799)); s.sendall(sys.argv[1].encode()+b'\n'); print(s.makefile().readline().strip())" "$1"; }
podman --runtime runc run -d --name looper --network host \
	-v /usr/local/lib/seamless-test:/app:ro --rootfs $R python3 /app/demo.py 7799
sleep 8
podman ps
get INC; get INC
podman inspect looper --format '{{.State.Pid}} {{.State.ConmonPid}} {{.State.Status}}'
podman --runtime runc container checkpoint --export /tmp/ck.tar looper; echo "checkpoint rc $?"
find /var/lib/containers -name dump.log | while read -r f; do echo "== $f"; grep -E "Error|Warn" "$f" | tail -15; done
ls -la /tmp/ck.tar
podman ps -a
podman rm -f looper
podman --runtime runc container restore --import /tmp/ck.tar; echo "restore rc $?"
podman ps
get GET
podman inspect looper --format '{{.State.Pid}} {{.State.ConmonPid}} {{.State.Status}}'
find /var/lib/containers -name restore.log | while read -r f; do echo "== $f"; grep -E "Error" "$f" | tail -10; done
