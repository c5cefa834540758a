#!/bin/sh
# Lab: can podman (Debian bookworm) checkpoint a container to a file and restore
# it, with this CRIU, in the guest? Installs podman from the network (QEMU's
# user-mode NAT), runs a container from the guest's own root file system.
set -x
echo "nameserver 10.0.2.3" > /etc/resolv.conf
export DEBIAN_FRONTEND=noninteractive
time apt-get update -q >/dev/null
time apt-get install -y -q --no-install-recommends podman crun runc conmon catatonit >/tmp/apt.log 2>&1
tail -3 /tmp/apt.log
podman --version; crun --version; runc --version
get() { python3 -c "
import socket,sys
s=socket.create_connection(('127.0.0.1',7799)); s.sendall(sys.argv[1].encode()+b'\n'); print(s.makefile().readline().strip())" "$1"; }
for rt in crun runc; do
	echo "=== runtime $rt"
	podman rm -f looper >/dev/null 2>&1
	podman --runtime "$rt" run -d --name looper --network host --rootfs / \
		python3 /usr/local/lib/seamless-test/demo.py 7799
	sleep 5
	get INC; get INC
	podman ps
	rm -f /tmp/ck.tar
	time podman --runtime "$rt" container checkpoint --export /tmp/ck.tar --tcp-established looper; echo "checkpoint rc $?"
	podman ps -a
	podman rm -f looper
	time podman --runtime "$rt" container restore --import /tmp/ck.tar --tcp-established; echo "restore rc $?"
	podman ps
	get GET
	podman inspect looper --format '{{.State.Pid}} {{.State.ConmonPid}} {{.State.Status}}'
done
